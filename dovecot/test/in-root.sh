#!/usr/bin/env bash
# Runs a command inside a Debian root (chroot) the way the tests run its
# Dovecot: in a private mount namespace that goes away with the command,
# with a /proc (valgrind needs one) and, with --bind, a folder of this run
# mounted over one of the root's, e.g. the settings modules build-in-root.sh
# staged over the root's <moduledir>/settings, so that the config process
# and doveconf load this run's settings module while concurrent runs with
# other plugin code load theirs. The root itself is not changed (apart from
# creating the folder mounted over if it is missing).
#
#   in-root.sh ROOT [--bind FOLDER PATH_IN_ROOT] COMMAND [ARG...]
#
# ROOT / is this machine (its /proc stays). Run as root. The command's exit
# code is in-root.sh's.
set -euo pipefail

usage="usage: in-root.sh ROOT [--bind FOLDER PATH_IN_ROOT] COMMAND [ARG...]"
root=${1:?$usage}
shift
from='' to=''
if [ "${1:-}" = --bind ]; then
	[ $# -ge 3 ] || { echo "$usage" >&2; exit 2; }
	from=$(cd "$2" && pwd) to=$3
	shift 3
fi
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
root=$(cd "$root" && pwd)
root=${root%/}
[ -z "$to" ] || mkdir -p "$root$to"

# shellcheck disable=SC2016 # expanded by the inner shell
exec unshare --mount --propagation private sh -c '
	root=$1 from=$2 to=$3
	shift 3
	if [ -n "$from" ]; then
		mount --bind "$from" "$root$to" || exit 1
	fi
	if [ -n "$root" ]; then
		mount -t proc proc "$root/proc" || exit 1
	fi
	exec chroot "${root:-/}" "$@"' sh "$root" "$from" "$to" "$@"
