#!/usr/bin/env bash
# Install xapsd and its Dovecot plugin into a docker-mailserver image.
#
# The Dockerfile's `mailserver` stage runs this as root while building the
# image, with the tree that scripts/build.sh built (bin/xapsd and
# dovecot/build/*.so, compiled against the same image's Dovecot). It installs:
#
#   /usr/local/bin/xapsd                          0755  the daemon
#   <Dovecot moduledir>/lib25_xaps_*_plugin.so    0644  the plugin
#   /etc/dovecot/conf.d/95-xaps.conf              0644  loads the plugin
#   /etc/supervisor/conf.d/xapsd.conf             0644  runs the daemon
#   /etc/xapsd -> /tmp/docker-mailserver/xapsd          symlink, so that
#        `xapsd devices list` and friends find the configuration that lives
#        in docker-mailserver's config volume without --config
#
# Nothing is written under /tmp/docker-mailserver or /var/mail-state: those
# are the volumes, and they belong to the admin (docs/docker-mailserver.md).
# Running it again gives the same result.
#
# Environment:
#   SRC        the built source tree (default: this script's repository)
#   ROOT       prefix for every path above, for tests (default: empty, i.e. /)
#   MODULEDIR  Dovecot's module folder (default: asked from doveconf, else
#              /usr/lib/dovecot/modules)
set -euo pipefail

SRC=${SRC:-$(cd "$(dirname "$0")/.." && pwd)}
ROOT=${ROOT:-}
ROOT=${ROOT%/}
config_volume=/tmp/docker-mailserver/xapsd

say() { printf 'docker-mailserver-install.sh: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

if [ -z "${MODULEDIR:-}" ]; then
	# mail_plugin_dir is where Dovecot loads plugins from; ask the image's
	# own Dovecot rather than assume Debian's path.
	MODULEDIR=$(doveconf -h mail_plugin_dir 2>/dev/null || true)
	MODULEDIR=${MODULEDIR:-/usr/lib/dovecot/modules}
fi

plugins=("$SRC"/dovecot/build/lib25_xaps_imap_plugin.so "$SRC"/dovecot/build/lib25_xaps_push_notification_plugin.so)
for f in "$SRC/bin/xapsd" "${plugins[@]}" "$SRC/configs/dovecot/95-xaps.conf" "$SRC/configs/supervisord/xapsd.conf"; do
	[ -f "$f" ] || die "$f is missing; run scripts/build.sh first"
done

install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT$MODULEDIR" "$ROOT/etc/dovecot/conf.d" "$ROOT/etc/supervisor/conf.d"
install -m 0755 "$SRC/bin/xapsd" "$ROOT/usr/local/bin/xapsd"
install -m 0644 "${plugins[@]}" "$ROOT$MODULEDIR/"
install -m 0644 "$SRC/configs/dovecot/95-xaps.conf" "$ROOT/etc/dovecot/conf.d/95-xaps.conf"
install -m 0644 "$SRC/configs/supervisord/xapsd.conf" "$ROOT/etc/supervisor/conf.d/xapsd.conf"

# /etc/xapsd is xapsd's default configuration folder. In this image the
# configuration is in the config volume, so point the folder there. An
# existing real folder with files in it is someone's setup: leave it alone.
link=$ROOT/etc/xapsd
if [ -L "$link" ] || [ ! -e "$link" ]; then
	ln -sfn "$config_volume" "$link"
elif [ -d "$link" ] && rmdir "$link" 2>/dev/null; then
	ln -s "$config_volume" "$link"
else
	say "warning: $link exists and is not empty; not linking it to $config_volume" >&2
	say "warning: give admin commands the configuration: xapsd --config $config_volume/xapsd.yaml devices list" >&2
fi

say "installed xapsd $("$ROOT/usr/local/bin/xapsd" --version 2>/dev/null | sed 's/^xapsd //') and the plugin into ${ROOT:-/} (plugins in $MODULEDIR)"
