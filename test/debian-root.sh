#!/usr/bin/env bash
# Makes (or completes) a throw-away Debian root for the tests, with
# debootstrap from the mirror apt already uses:
#
#   test/debian-root.sh SUITE DIR [PACKAGE...]
#
# e.g. `test/debian-root.sh trixie /var/cache/xapsd/debian13-root dovecot-core`.
# A root that exists is reused; packages it lacks are installed into it. A
# new root is built beside DIR and renamed into place only when complete, so
# an interrupted run never leaves a half-made root behind. Keep DIR outside
# the clone (it is several hundred MB). Run as root.
set -euo pipefail

suite=${1:?usage: debian-root.sh SUITE DIR [PACKAGE...]}
dir=${2:?usage: debian-root.sh SUITE DIR [PACKAGE...]}
shift 2
packages=("$@")

if [ "$(id -u)" != 0 ]; then
	echo "debian-root.sh: must run as root" >&2
	exit 2
fi

# The mirror of the host's own sources, so that the root comes from where
# apt already gets packages (deb.debian.org otherwise).
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
	mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)\/* *$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
fi
if [ -z "$mirror" ]; then
	mirror=$(sed -n 's/^deb  *\(\[[^]]*\] *\)\{0,1\}\(http[^ ]*\/debian\)\/* .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
fi
mirror=${mirror:-http://deb.debian.org/debian}

# debootstrap writes no /etc/hosts; a Debian install has one, and without
# it "localhost" (in a Dovecot plugin URL, say) does not resolve inside the
# root.
write_hosts() {
	[ -e "$1/etc/hosts" ] && return 0
	printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$1/etc/hosts"
}

if [ ! -x "$dir/usr/bin/apt-get" ]; then
	command -v debootstrap >/dev/null || {
		echo "debian-root.sh: debootstrap not found (apt-get install debootstrap)" >&2
		exit 2
	}
	new=$dir.new
	rm -rf "$new"
	mkdir -p "$(dirname "$dir")"
	include=$(IFS=,; echo "${packages[*]}")
	echo "debian-root.sh: debootstrap $suite into $dir from $mirror" >&2
	debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$new" "$mirror" >"$new.log" 2>&1 || {
		echo "debian-root.sh: debootstrap failed; last lines of $new.log:" >&2
		tail -n 20 "$new.log" >&2
		exit 1
	}
	rm -f "$new.log"
	# No daemon may start inside the root when packages are installed.
	printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
	chmod 0755 "$new/usr/sbin/policy-rc.d"
	write_hosts "$new"
	mv "$new" "$dir"
	exit 0
fi
write_hosts "$dir"

missing=()
for p in "${packages[@]}"; do
	# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
	chroot "$dir" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "debian-root.sh: installing ${missing[*]} into $dir" >&2
	log=$(mktemp)
	# (apt in a root without /dev/pts complains that it cannot log; harmless.)
	if ! { chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
		chroot "$dir" env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		exit 1
	fi
	rm -f "$log"
fi
