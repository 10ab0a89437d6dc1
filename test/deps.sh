#!/usr/bin/env bash
# What `make test` needs besides Go, on a Debian 12 machine:
#
#   test/deps.sh            install what is missing (as root), saying what
#   test/deps.sh --check    only list what is missing; exit 1 if anything is
#
# - Debian's Dovecot 2.3 (the end-to-end tests and the plugin's checks run a
#   real one), the plugin's build tools, valgrind (the plugin's checks run
#   once under it), systemd's tools, shellcheck and promtool (the packaging
#   checks), debootstrap, dpkg-dev and lintian (the Debian packages),
#   PostgreSQL's server (the PostgreSQL registry's tests start throw-away
#   clusters of their own; the system cluster is stopped and not used);
# - a Debian 13 root with Dovecot 2.4 at $XAPS_DEBIAN13_ROOT (default
#   /var/cache/xapsd/debian13-root), kept outside the clone and reused: the
#   same checks and end-to-end tests run against Dovecot 2.4 in it, and the
#   Debian 13 package is built in it;
# - clean minimal Debian 12 and 13 roots (/var/cache/xapsd/debian12-clean,
#   debian13-clean) that the package tests install the packages into, each
#   time in a throw-away overlay, so that they stay clean;
# - podman, buildah and runc, and the stand-in base images the container
#   tests build the Dockerfile on (test/container/base-images.sh: a
#   docker-mailserver 16 stand-in from its own Debian 13 root, a Go image
#   and a distroless runtime).
#
# .ci/run calls `make test`, which calls this first.
set -euo pipefail

root=${XAPS_DEBIAN13_ROOT:-/var/cache/xapsd/debian13-root}
cache=${XAPS_ROOT_CACHE:-/var/cache/xapsd}
here=$(cd "$(dirname "$0")" && pwd)
check_only=0
[ "${1:-}" = --check ] && check_only=1

host_packages=(dovecot-core dovecot-imapd dovecot-lmtpd dovecot-dev openssl make gcc
	pkg-config libc6-dev python3 valgrind systemd shellcheck prometheus debootstrap
	dpkg-dev fakeroot lintian postgresql podman buildah runc)
root_packages=(dovecot-core dovecot-imapd dovecot-lmtpd dovecot-dev gcc make libc6-dev
	pkg-config valgrind dpkg-dev)

missing=()
for p in "${host_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
root_ok=1
[ -x "$root/usr/sbin/dovecot" ] && [ -x "$root/usr/bin/valgrind" ] && [ -x "$root/usr/bin/dpkg-shlibdeps" ] && [ -e "$root/etc/hosts" ] || root_ok=0
clean_ok=1
[ -x "$cache/debian12-clean/usr/bin/apt-get" ] && [ -x "$cache/debian13-clean/usr/bin/apt-get" ] || clean_ok=0

images_ok=1
"$here/container/base-images.sh" --check >/dev/null 2>&1 || images_ok=0

if [ ${#missing[@]} -eq 0 ] && [ "$root_ok" = 1 ] && [ "$clean_ok" = 1 ] && [ "$images_ok" = 1 ]; then
	exit 0
fi
if [ "$check_only" = 1 ] || [ "$(id -u)" != 0 ]; then
	[ ${#missing[@]} -eq 0 ] || echo "missing Debian packages: ${missing[*]}" >&2
	[ "$root_ok" = 1 ] || echo "missing the Debian 13 root with Dovecot 2.4 at $root" >&2
	[ "$clean_ok" = 1 ] || echo "missing the clean Debian 12 and 13 roots in $cache" >&2
	[ "$images_ok" = 1 ] || echo "missing the container tests' base images (test/container/base-images.sh)" >&2
	echo "run test/deps.sh as root to install them (make test does when run as root)" >&2
	exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
	echo "test/deps.sh: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# Dovecot's and Prometheus' packages start system services on the
	# standard ports; the tests run their own on free loopback ports.
	if command -v systemctl >/dev/null 2>&1; then
		systemctl stop dovecot prometheus postgresql >/dev/null 2>&1 || true
	fi
fi
if [ "$root_ok" = 0 ]; then
	echo "test/deps.sh: preparing the Debian 13 root with Dovecot 2.4 at $root (about a minute)" >&2
	"$here/debian-root.sh" trixie "$root" "${root_packages[@]}"
fi
if [ "$clean_ok" = 0 ]; then
	echo "test/deps.sh: preparing clean Debian 12 and 13 roots in $cache (about a minute)" >&2
	"$here/debian-root.sh" bookworm "$cache/debian12-clean"
	"$here/debian-root.sh" trixie "$cache/debian13-clean"
fi
if [ "$images_ok" = 0 ]; then
	echo "test/deps.sh: making the container tests' base images that are missing or out of date (a few minutes the first time)" >&2
	"$here/container/base-images.sh"
fi
