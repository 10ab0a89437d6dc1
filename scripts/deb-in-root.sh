#!/usr/bin/env bash
# Builds the Debian package inside a Debian root (a chroot with dovecot-dev,
# gcc, make and dpkg-dev, e.g. a root of test/dovecot-roots), so that it is
# built against that root's Dovecot and depends on its ABI: scripts/deb.sh
# runs there on a copy of the sources with the bin/xapsd built here (static,
# so one build serves every release; the root needs no Go). `make deb` runs
# this for each root of test/dovecot-roots.
#
# Usage: scripts/deb-in-root.sh ROOT OUTDIR
#
# Writes the package into OUTDIR and prints its path. Needs bin/xapsd (make
# build, or scripts/deb.sh here, makes it). Environment: VERSION and
# SOURCE_DATE_EPOCH are passed on to deb.sh (default: from git, here).
# Run as root.
set -euo pipefail

root=${1:?usage: scripts/deb-in-root.sh ROOT OUTDIR}
out=${2:?usage: scripts/deb-in-root.sh ROOT OUTDIR}
src=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "deb-in-root.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (chroot)"
[ -x "$root/usr/bin/dpkg-deb" ] || die "no dpkg-deb in $root (test/deps.sh makes the roots)"
[ -x "$src/bin/xapsd" ] || die "no bin/xapsd; build it first (make build)"
# The version is the checkout's: git is here, not in the root.
VERSION=${VERSION:-$(git -C "$src" describe --always --dirty 2>/dev/null || echo dev)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$src" log -1 --format=%ct 2>/dev/null || date -u +%s)}

work=$(mktemp -d "$root/tmp/xapsd-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
for p in README.md Makefile configs scripts dovecot/Makefile dovecot/probe.sh dovecot/probes dovecot/src bin/xapsd; do
	mkdir -p "$(dirname "$work/$p")"
	cp -r "$src/$p" "$work/$p"
done
inside=${work#"$root"}
chroot "$root" env VERSION="$VERSION" SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" \
	bash "$inside/scripts/deb.sh" --prebuilt-daemon --out "$inside/dist" >&2
mkdir -p "$out"
for deb in "$work"/dist/*.deb; do
	[ -f "$deb" ] || die "deb.sh in $root made no package"
	cp "$deb" "$out/"
	echo "$out/$(basename "$deb")"
done
