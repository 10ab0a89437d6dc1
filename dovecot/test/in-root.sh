#!/usr/bin/env bash
# Runs a command inside a Debian root (chroot) the way the tests run its
# Dovecot: in a private mount namespace that goes away with the command,
# with a /proc (valgrind needs one) and, when SETTINGS is not empty, the
# folder SETTINGS (as build-in-root.sh staged it) mounted over the root's
# <moduledir>/settings, so that the config process and doveconf load this
# run's settings module while concurrent runs with other plugin code load
# theirs. The root itself is not changed (apart from creating that folder
# if it is missing).
#
#   in-root.sh ROOT SETTINGS COMMAND [ARG...]
#
# ROOT / is this machine (its /proc stays). Run as root. The command's exit code is in-root.sh's.
set -euo pipefail

root=${1:?usage: in-root.sh ROOT SETTINGS COMMAND [ARG...]}
settings=${2?usage: in-root.sh ROOT SETTINGS COMMAND [ARG...]}
shift 2
[ $# -gt 0 ] || { echo "usage: in-root.sh ROOT SETTINGS COMMAND [ARG...]" >&2; exit 2; }
root=$(cd "$root" && pwd)
root=${root%/}

target=
if [ -n "$settings" ]; then
	# shellcheck disable=SC2016 # expanded by the root's shell
	moduledir=$(chroot "${root:-/}" sh -c '. /usr/lib/dovecot/dovecot-config && echo "$dovecot_moduledir"')
	target=$root$moduledir/settings
	mkdir -p "$target"
fi
# shellcheck disable=SC2016 # expanded by the inner shell
exec unshare --mount --propagation private sh -c '
	root=$1 settings=$2 target=$3
	shift 3
	if [ -n "$settings" ]; then
		mount --bind "$settings" "$target" || exit 1
	fi
	if [ -n "$root" ]; then
		mount -t proc proc "$root/proc" || exit 1
	fi
	exec chroot "${root:-/}" "$@"' sh "$root" "$settings" "$target" "$@"
