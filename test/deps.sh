#!/usr/bin/env bash
# What `make test` needs besides Go, on a Debian 12 machine:
#
#   test/deps.sh            install what is missing (as root), saying what
#   test/deps.sh --check    only list what is missing; exit 1 if anything is
#
# - Debian's Dovecot 2.3 (the end-to-end tests and the plugin's checks run a
#   real one), the plugin's build tools, valgrind (the plugin's checks run
#   once under it), strace (they slow Dovecot's saves with it), systemd's tools, shellcheck and promtool (the packaging
#   checks), debootstrap, dpkg-dev and lintian (the Debian packages),
#   PostgreSQL's server (the PostgreSQL registry's tests start throw-away
#   clusters of their own; the system cluster is stopped and not used);
# - a debootstrap root per Dovecot of the test matrix (test/dovecot-roots:
#   Debian 12 with bookworm-backports' 2.3.21, Debian 13's 2.4.1, forky's
#   2.4.5) under $XAPS_ROOT_CACHE (default /var/cache/xapsd), kept outside
#   the clone and reused: the plugin's checks and the end-to-end tests run
#   against the Dovecot in each, and the Debian package for each is built
#   in it;
# - clean minimal roots of each release (debian12-clean, debian13-clean,
#   debian14-clean) that the package tests install the packages into, each
#   time in a throw-away overlay, so that they stay clean;
# - podman, buildah and runc, and the stand-in base images the container
#   tests build the Dockerfile on (test/container/base-images.sh: a
#   docker-mailserver 16 stand-in from its own Debian 13 root, a Go image
#   and a distroless runtime).
#
# .ci/run calls `make test`, which calls this first.
set -euo pipefail

cache=${XAPS_ROOT_CACHE:-/var/cache/xapsd}
here=$(cd "$(dirname "$0")" && pwd)
check_only=0
[ "${1:-}" = --check ] && check_only=1

host_packages=(dovecot-core dovecot-imapd dovecot-lmtpd dovecot-dev openssl make gcc
	pkg-config libc6-dev python3 valgrind strace systemd shellcheck prometheus debootstrap
	dpkg-dev fakeroot lintian postgresql podman buildah runc)
root_packages=(dovecot-core dovecot-imapd dovecot-lmtpd dovecot-dev gcc make libc6-dev
	pkg-config valgrind dpkg-dev)

missing=()
for p in "${host_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# "suite folder [package...]" of every root that is missing or incomplete.
roots=()
while read -r name suite clean; do
	r=$cache/$name
	if ! { [ -x "$r/usr/sbin/dovecot" ] && [ -x "$r/usr/bin/valgrind" ] &&
		[ -x "$r/usr/bin/dpkg-shlibdeps" ] && [ -e "$r/etc/hosts" ]; }; then
		roots+=("$suite $r ${root_packages[*]}")
	fi
	[ -x "$cache/$clean/usr/bin/apt-get" ] || roots+=("${suite%-backports} $cache/$clean")
done < <(grep -v '^#' "$here/dovecot-roots")
# The host's Debian 12 package is installed into a clean Debian 12 root too.
[ -x "$cache/debian12-clean/usr/bin/apt-get" ] || roots+=("bookworm $cache/debian12-clean")
mapfile -t roots < <(printf '%s\n' "${roots[@]}" | awk 'NF && !seen[$2]++')

images_ok=1
"$here/container/base-images.sh" --check >/dev/null 2>&1 || images_ok=0

if [ ${#missing[@]} -eq 0 ] && [ ${#roots[@]} -eq 0 ] && [ "$images_ok" = 1 ]; then
	exit 0
fi
if [ "$check_only" = 1 ] || [ "$(id -u)" != 0 ]; then
	[ ${#missing[@]} -eq 0 ] || echo "missing Debian packages: ${missing[*]}" >&2
	for r in "${roots[@]}"; do
		read -ra args <<<"$r"
		echo "missing the ${args[0]} root at ${args[1]}" >&2
	done
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
# The roots are made side by side: most of a debootstrap is waiting for the
# mirror, and one after the other they took 11 minutes on a busy two-core
# machine. Each one's output goes to a log that is shown if it fails.
if [ ${#roots[@]} -gt 0 ]; then
	logs=$(mktemp -d)
	pids=()
	start=$SECONDS
	for i in "${!roots[@]}"; do
		read -ra args <<<"${roots[$i]}"
		echo "test/deps.sh: preparing the ${args[0]} root at ${args[1]}" >&2
		"$here/debian-root.sh" "${args[@]}" >"$logs/$i" 2>&1 &
		pids+=($!)
	done
	failed=0
	for i in "${!pids[@]}"; do
		read -ra args <<<"${roots[$i]}"
		if ! wait "${pids[$i]}"; then
			echo "test/deps.sh: making ${args[1]} failed:" >&2
			cat "$logs/$i" >&2
			failed=1
		fi
	done
	rm -rf "$logs"
	[ "$failed" = 0 ] || exit 1
	echo "test/deps.sh: ${#roots[@]} roots made in $((SECONDS - start)) s" >&2
fi
if [ "$images_ok" = 0 ]; then
	echo "test/deps.sh: making the container tests' base images that are missing or out of date (a few minutes the first time)" >&2
	"$here/container/base-images.sh"
fi
