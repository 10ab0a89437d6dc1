#!/usr/bin/env bash
# Makes (or completes) a throw-away Debian root for the tests, with
# debootstrap from the mirror apt already uses:
#
#   test/debian-root.sh SUITE DIR [PACKAGE...]
#
# e.g. `test/debian-root.sh trixie /var/cache/xapsd/debian13-root dovecot-core`.
# SUITE is a Debian suite (bookworm, trixie, forky, sid); a suite this
# debootstrap has no script for (Debian 12's knows no forky) is made with
# sid's, which every testing suite follows. SUITE-backports (e.g.
# bookworm-backports) makes a SUITE root with the backports in its sources
# and installs the packages from there where it has them (apt-get -t).
# A root that exists is reused; packages it lacks are installed into it. A
# new root is built beside DIR and renamed into place only when complete, so
# an interrupted run never leaves a half-made root behind. Keep DIR outside
# the clone (it is several hundred MB). Run as root.
set -euo pipefail

suite=${1:?usage: debian-root.sh SUITE DIR [PACKAGE...]}
dir=${2:?usage: debian-root.sh SUITE DIR [PACKAGE...]}
shift 2
packages=("$@")
# The suite debootstrap makes, and the release apt installs the packages
# from (-t) when that is another one.
base_suite=${suite%-backports}
target=
[ "$base_suite" != "$suite" ] && target=$suite

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

# install_packages ROOT PACKAGE...: apt-get install inside ROOT, from
# $target if set.
install_packages() {
	local into=$1 log
	shift
	echo "debian-root.sh: installing $*${target:+ from $target} into $into" >&2
	log=$(mktemp)
	# (apt in a root without /dev/pts complains that it cannot log; harmless.
	# Testing's Release file is valid for a week only: a mirror that is a
	# snapshot must not stop the tests.)
	if ! { chroot "$into" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
			-o Acquire::Check-Valid-Until=false &&
		chroot "$into" env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends ${target:+-t "$target"} "$@"; } >"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		exit 1
	fi
	rm -f "$log"
}

if [ ! -x "$dir/usr/bin/apt-get" ]; then
	command -v debootstrap >/dev/null || {
		echo "debian-root.sh: debootstrap not found (apt-get install debootstrap)" >&2
		exit 2
	}
	new=$dir.new
	rm -rf "$new"
	mkdir -p "$(dirname "$dir")"
	# From backports the packages come with apt below, not twice.
	include=
	[ -n "$target" ] || include=$(IFS=,; echo "${packages[*]}")
	script=
	if [ ! -e "/usr/share/debootstrap/scripts/$base_suite" ]; then
		script=/usr/share/debootstrap/scripts/sid
	fi
	echo "debian-root.sh: debootstrap $base_suite${script:+ (with the script for sid)} into $dir from $mirror" >&2
	debootstrap --variant=minbase ${include:+--include="$include"} "$base_suite" "$new" "$mirror" ${script:+"$script"} >"$new.log" 2>&1 || {
		echo "debian-root.sh: debootstrap failed; last lines of $new.log:" >&2
		tail -n 20 "$new.log" >&2
		exit 1
	}
	rm -f "$new.log"
	# No daemon may start inside the root when packages are installed.
	printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
	chmod 0755 "$new/usr/sbin/policy-rc.d"
	write_hosts "$new"
	if [ -n "$target" ]; then
		echo "deb $mirror $target main" >"$new/etc/apt/sources.list.d/$target.list"
		install_packages "$new" "${packages[@]}"
	fi
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
	install_packages "$dir" "${missing[@]}"
fi
