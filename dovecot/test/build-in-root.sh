#!/usr/bin/env bash
# Builds the xaps plugins inside a Debian root (a chroot with dovecot-dev,
# gcc and make, e.g. the roots test/deps.sh prepares) against that root's
# Dovecot, and stages them for a test run:
#
#   build-in-root.sh ROOT OUTDIR
#
# (ROOT / is this machine: `make -C dovecot check` tests its own Dovecot so.)
# copies build/lib25_xaps_*_plugin.so into OUTDIR and, where the plugin
# comes with a settings module (Dovecot's settings framework), makes
# OUTDIR/settings: the root's settings modules with this build's
# libxaps_settings.so, for in-root.sh --bind to mount over the root's own
# folder for this run only (the config process loads settings modules only
# from there, and a concurrent run may be testing other plugin code). Prints
# what the run needs to know, one "key value" line each:
#
#   version 2.4.5               the root's Dovecot
#   settings framework          how the plugin reads its settings (the
#                               settings probe: framework or plugin_env)
#   moduledir /usr/lib/dovecot/modules
#   libexecdir /usr/lib/dovecot where imap and lmtp are
#
# DOVECOT_CONFIG is passed on to dovecot/Makefile. Run as root.
set -euo pipefail

root=${1:?usage: build-in-root.sh ROOT OUTDIR}
out=${2:?usage: build-in-root.sh ROOT OUTDIR}
src=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$root" && pwd)
root=${root%/}
# A make that runs this (make -C dovecot check) must not hand its flags and
# jobserver to the one in the root.
in_root() {
	chroot "${root:-/}" env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
		${DOVECOT_CONFIG:+DOVECOT_CONFIG="$DOVECOT_CONFIG"} "$@"
}

[ -x "$root/usr/sbin/dovecot" ] || { echo "build-in-root.sh: no Dovecot in $root" >&2; exit 2; }
# A fresh copy of the sources (never a host build folder) per run, so that
# concurrent runs do not share objects.
work=$(mktemp -d "$root/tmp/xaps-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$src/Makefile" "$src/probe.sh" "$src/probes" "$src/src" "$work/"
inside=${work#"$root"}
in_root make -s -C "$inside" WERROR=1 >/dev/null
mkdir -p "$out"
cp "$work"/build/lib25_xaps_*_plugin.so "$out/"
dirs=$(in_root make -s -C "$inside" dirs)
moduledir=$(echo "$dirs" | sed -n 's/^moduledir //p')
if [ -f "$work/build/settings/libxaps_settings.so" ]; then
	mkdir -p "$out/settings"
	# Copies: a symbolic link would point into the folder mounted over.
	find "$root$moduledir/settings" -maxdepth 1 -name '*.so' ! -name libxaps_settings.so \
		-exec cp {} "$out/settings/" \; 2>/dev/null || true
	cp "$work/build/settings/libxaps_settings.so" "$out/settings/"
fi
echo "version $(in_root make -s -C "$inside" version)"
echo "settings $(in_root make -s -C "$inside" probes | sed -n 's/^settings //p')"
echo "$dirs"
