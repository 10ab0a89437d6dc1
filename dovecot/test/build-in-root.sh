#!/usr/bin/env bash
# Builds the xaps plugins inside a Debian root (a chroot with dovecot-dev,
# gcc and make, e.g. the Debian 13 root test/deps.sh prepares) against that root's
# Dovecot, and stages them for a test run:
#
#   build-in-root.sh ROOT OUTDIR
#
# copies build/lib25_xaps_*_plugin.so into OUTDIR and, for Dovecot 2.4,
# installs the settings module into ROOT's <moduledir>/settings/ (the config
# process only loads settings modules from there; the root is a throw-away
# one). Prints the root's Dovecot version. Run as root.
set -euo pipefail

root=${1:?usage: build-in-root.sh ROOT OUTDIR}
out=${2:?usage: build-in-root.sh ROOT OUTDIR}
src=$(cd "$(dirname "$0")/.." && pwd)

[ -x "$root/usr/sbin/dovecot" ] || { echo "build-in-root.sh: no Dovecot in $root" >&2; exit 2; }
# A fresh copy of the sources (never a host build folder) per run, so that
# concurrent runs do not share objects.
work=$(mktemp -d "$root/tmp/xaps-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$src/Makefile" "$src/probe.sh" "$src/probes" "$src/src" "$work/"
inside=${work#"$root"}
chroot "$root" make -s -C "$inside" WERROR=1 >/dev/null
mkdir -p "$out"
cp "$work"/build/lib25_xaps_*_plugin.so "$out/"
if [ -f "$work/build/settings/libxaps_settings.so" ]; then
	# shellcheck disable=SC2016 # expanded by the root's shell
	moduledir=$(chroot "$root" sh -c '. /usr/lib/dovecot/dovecot-config && echo "$dovecot_moduledir"')
	dest="$root$moduledir/settings"
	mkdir -p "$dest"
	# Replaced in one rename: a Dovecot of a concurrent test run may be
	# loading it right now.
	cp "$work/build/settings/libxaps_settings.so" "$dest/.libxaps_settings.so.$$"
	mv -f "$dest/.libxaps_settings.so.$$" "$dest/libxaps_settings.so"
fi
chroot "$root" make -s -C "$inside" version
