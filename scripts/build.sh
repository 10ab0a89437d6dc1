#!/usr/bin/env bash
# Build xapsd and the Dovecot plugin, and optionally install them.
#
# This is the one build recipe: `make build` (and so make run, make bench and
# make soak) runs it, scripts/deb.sh and the Dockerfile run it, and
# test/packaging/packaging_test.sh runs it on every CI run, so what ships is
# what was tested.
#
# Usage: scripts/build.sh [options]
#
#   (no options)     build bin/xapsd and dovecot/build/lib25_xaps_*_plugin.so
#                    (with Dovecot 2.4 also dovecot/build/settings/libxaps_settings.so)
#   --install        then install into DESTDIR (default: the running system)
#   --destdir DIR    install into DIR instead of / (implies --install)
#   --prefix DIR     /usr (default) or e.g. /usr/local: where bin/xapsd and the
#                    systemd files go. The plugin always goes into Dovecot's
#                    own module folder, configuration always into /etc.
#   --systemd        also install xapsd.service, sysusers.d and tmpfiles.d files
#                    (into PREFIX/lib/systemd/system, PREFIX/lib/sysusers.d,
#                    PREFIX/lib/tmpfiles.d; systemd searches /usr/local/lib too)
#   --no-plugin      build and install the daemon only (no dovecot-dev needed)
#   --no-daemon      build and install the plugin only (no Go needed)
#   --prebuilt-daemon  install the bin/xapsd built before instead of building it
#                    (e.g. inside a Debian root that has no Go)
#   -h, --help       this text
#
# Installed files (with --prefix /usr):
#   /usr/bin/xapsd                               0755
#   <dovecot moduledir>/lib25_xaps_*_plugin.so   0644  (make -C dovecot install)
#   <dovecot moduledir>/settings/libxaps_settings.so  0644  Dovecot 2.4 only
#   /etc/dovecot/conf.d/95-xaps.conf             0644  configs/dovecot/2.3/ or
#                    2.4/, whichever fits the Dovecot the plugin is built for
#   /etc/xapsd/xapsd.yaml                        0644  documented sample
#   /var/lib/xapsd/                              0700  state, only into a DESTDIR
#                    (on a live system systemd-tmpfiles and StateDirectory=
#                    create it owned by the xapsd user)
#   /usr/lib/systemd/system/xapsd.service        0644  with --systemd
#   /usr/lib/sysusers.d/xapsd.conf               0644  with --systemd
#   /usr/lib/tmpfiles.d/xapsd.conf               0644  with --systemd
#
# The two configuration files are never overwritten: when one already exists
# with other content, the new version is written beside it as NAME.new (Dovecot
# only reads conf.d/*.conf, so a 95-xaps.conf.new is inert).
#
# Environment:
#   VERSION        version string for `xapsd --version` (default: git describe,
#                  or "dev" outside a git checkout)
#   GO             Go command (default: go)
#   CGO_ENABLED    default 0: a static binary that runs on any Linux and can be
#                  copied between images
#   DESTDIR, PREFIX  same as --destdir, --prefix
#   DOVECOT_CONFIG passed to make -C dovecot (where dovecot-config is)
#   MAKE           make command (default: make)
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

src=$(cd "$(dirname "$0")/.." && pwd)
destdir=${DESTDIR:-}
prefix=${PREFIX:-/usr}
install=0
systemd=0
build_daemon=1
build_plugin=1
[ -n "$destdir" ] && install=1

while [ $# -gt 0 ]; do
	case $1 in
	--install) install=1 ;;
	--destdir) [ $# -ge 2 ] || { echo "build.sh: --destdir needs a folder" >&2; exit 2; }
		destdir=$2; install=1; shift ;;
	--destdir=*) destdir=${1#*=}; install=1 ;;
	--prefix) [ $# -ge 2 ] || { echo "build.sh: --prefix needs a folder" >&2; exit 2; }
		prefix=$2; shift ;;
	--prefix=*) prefix=${1#*=} ;;
	--systemd) systemd=1 ;;
	--no-plugin) build_plugin=0 ;;
	--no-daemon) build_daemon=0 ;;
	--prebuilt-daemon) build_daemon=prebuilt ;;
	-h | --help) usage; exit 0 ;;
	*) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done

case $prefix in
/*) prefix=${prefix%/} ;;
*) echo "build.sh: --prefix must be an absolute path, not $prefix" >&2; exit 2 ;;
esac
if [ -n "$destdir" ]; then
	mkdir -p "$destdir"
	destdir=$(cd "$destdir" && pwd)
	[ "$destdir" = / ] && destdir=
fi

GO=${GO:-go}
MAKE=${MAKE:-make}
export CGO_ENABLED=${CGO_ENABLED:-0}

if [ -z "${VERSION:-}" ]; then
	VERSION=$(git -C "$src" describe --always --dirty 2>/dev/null || echo dev)
fi

say() { printf 'build.sh: %s\n' "$*"; }

if [ "$build_daemon" = 1 ]; then
	say "building bin/xapsd $VERSION (CGO_ENABLED=$CGO_ENABLED)"
	(cd "$src" && "$GO" build -trimpath -ldflags "-X main.version=$VERSION" -o bin/xapsd ./cmd/xapsd)
elif [ "$build_daemon" = prebuilt ]; then
	[ -x "$src/bin/xapsd" ] || { echo "build.sh: --prebuilt-daemon: no bin/xapsd; build it first" >&2; exit 2; }
	build_daemon=1
fi
if [ "$build_plugin" = 1 ]; then
	dovecot_version=$("$MAKE" -s -C "$src/dovecot" version)
	say "building the Dovecot plugin for Dovecot $dovecot_version"
	"$MAKE" -s -C "$src/dovecot"
	# The snippet in the syntax of the settings the plugin reads: with a
	# settings module, Dovecot's settings framework (2.4), else plugin { }.
	if [ -f "$src/dovecot/build/settings/libxaps_settings.so" ]; then
		snippet=$src/configs/dovecot/2.4/95-xaps.conf
	else
		snippet=$src/configs/dovecot/2.3/95-xaps.conf
	fi
fi
[ "$install" = 1 ] || exit 0

# install_config SRC DEST: keep an admin's edited file, put ours beside it.
install_config() {
	local from=$1 to=$2
	install -d -m 0755 "$(dirname "$to")"
	if [ -e "$to" ] && ! cmp -s "$from" "$to"; then
		install -m 0644 "$from" "$to.new"
		say "kept $to; the shipped version is $to.new"
	else
		install -m 0644 "$from" "$to"
	fi
}

if [ "$build_daemon" = 1 ]; then
	install -d -m 0755 "$destdir$prefix/bin"
	install -m 0755 "$src/bin/xapsd" "$destdir$prefix/bin/xapsd"
	install_config "$src/configs/xapsd/xapsd.yaml" "$destdir/etc/xapsd/xapsd.yaml"
	if [ -n "$destdir" ]; then
		install -d -m 0700 "$destdir/var/lib/xapsd"
	fi
	if [ "$systemd" = 1 ]; then
		for d in systemd/system sysusers.d tmpfiles.d; do
			install -d -m 0755 "$destdir$prefix/lib/$d"
		done
		unit=$destdir$prefix/lib/systemd/system/xapsd.service
		sed "s|/usr/bin/xapsd|$prefix/bin/xapsd|g" "$src/configs/systemd/xapsd.service" >"$unit.tmp"
		chmod 0644 "$unit.tmp"
		mv "$unit.tmp" "$unit"
		install -m 0644 "$src/configs/systemd/xapsd.sysusers" "$destdir$prefix/lib/sysusers.d/xapsd.conf"
		install -m 0644 "$src/configs/systemd/xapsd.tmpfiles" "$destdir$prefix/lib/tmpfiles.d/xapsd.conf"
	fi
fi
if [ "$build_plugin" = 1 ]; then
	"$MAKE" -s -C "$src/dovecot" install DESTDIR="$destdir"
	install_config "$snippet" "$destdir/etc/dovecot/conf.d/95-xaps.conf"
fi
say "installed into ${destdir:-/}"
if [ -z "$destdir" ] && [ "$systemd" = 1 ]; then
	say "next: systemd-sysusers; systemd-tmpfiles --create xapsd.conf; systemctl daemon-reload"
fi
