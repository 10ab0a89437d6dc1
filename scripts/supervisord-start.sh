#!/usr/bin/env bash
# Starts xapsd for supervisord in the docker-mailserver image, as the
# unprivileged xapsd user. supervisord runs it as root (as every program of
# docker-mailserver); it prepares what xapsd must own and then replaces itself
# with xapsd, so that supervisord's SIGTERM reaches the daemon.
#
# docker-mailserver-install.sh installs it as /usr/local/libexec/xapsd/start
# and configs/supervisord/xapsd.conf runs:
#
#   start CONFIG_FILE STATE_FOLDER
#
# - STATE_FOLDER (in docker-mailserver's state volume) is created if missing
#   and, with what is in it, given to xapsd, mode 0700: it did not exist when
#   the image was built, and earlier versions ran xapsd as root.
# - The configuration folder (in the config volume, written by the admin on
#   the host) gets xapsd's group with read access for the group and none for
#   others, so that xapsd can read its credential files there and nobody else
#   can. Owner and the owner's access stay as the admin set them.
#
# Environment: XAPSD (default /usr/local/bin/xapsd), XAPSD_USER (default xapsd).
set -euo pipefail

config=${1:?usage: start CONFIG_FILE STATE_FOLDER}
state=${2:?usage: start CONFIG_FILE STATE_FOLDER}
xapsd=${XAPSD:-/usr/local/bin/xapsd}
user=${XAPSD_USER:-xapsd}

say() { printf 'xapsd start: %s\n' "$*" >&2; }

if ! id "$user" >/dev/null 2>&1; then
	say "no user $user in this image; was it built with scripts/docker-mailserver-install.sh?"
	exit 1
fi
group=$(id -gn "$user")

# A symlink here would hand whatever it points to to xapsd.
if [ -L "$state" ]; then
	say "$state is a symbolic link; refusing to take it over"
	exit 1
fi
install -d -m 0700 -o "$user" -g "$group" "$state"
chown -R --no-dereference "$user:$group" "$state"
chmod 0700 "$state"

confdir=$(dirname "$config")
if [ -d "$confdir" ] && [ ! -L "$confdir" ]; then
	chgrp -R --no-dereference "$group" "$confdir"
	chmod -R g+rX,g-w,o-rwx "$confdir"
fi

exec setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs \
	-- "$xapsd" --config "$config"
