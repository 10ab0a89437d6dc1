#!/usr/bin/env bash
# Install xapsd and its Dovecot plugin into a docker-mailserver image.
#
# The Dockerfile's `mailserver` stage runs this as root while building the
# image, with the tree that scripts/build.sh built (bin/xapsd and
# dovecot/build/, compiled against the same image's Dovecot: 2.3 in
# docker-mailserver 15, 2.4 in 16). It installs:
#
#   /usr/local/bin/xapsd                          0755  the daemon
#   <Dovecot moduledir>/lib25_xaps_*_plugin.so    0644  the plugin
#   <Dovecot moduledir>/settings/libxaps_settings.so  0644  its settings
#                    (Dovecot 2.4 only; see SETTINGSDIR)
#   /etc/dovecot/conf.d/95-xaps.conf              0644  loads the plugin:
#        configs/dovecot/2.3/ or 2.4/, for the Dovecot the plugin was built for
#   /etc/supervisor/conf.d/xapsd.conf             0644  runs the daemon
#   /usr/local/libexec/xapsd/start                0755  as the xapsd user
#        (scripts/supervisord-start.sh)
#   the system user and group xapsd, uid and gid 65532 (XAPSD_UID and
#        XAPSD_GID; nologin, no home folder of its own)
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
#   SETTINGSDIR  where Dovecot 2.4 loads settings modules from (default:
#              dovecot-config's dovecot_moduledir/settings, else
#              MODULEDIR/settings)
#   XAPSD_UID, XAPSD_GID  the ids of the user and group xapsd (default 65532
#              both). They are fixed because the host sees them on the folders
#              in the volumes (docs/docker-mailserver.md); 65532 is what the
#              daemon-only image runs as, and in the range Debian and Ubuntu
#              give to no user or group (65000-65533).
#   DOVECOT    the image's dovecot binary, to check that the plugin was built
#              for its version (default: dovecot from PATH; not checked when
#              there is none, e.g. in the tests' fake roots)
set -euo pipefail

SRC=${SRC:-$(cd "$(dirname "$0")/.." && pwd)}
ROOT=${ROOT:-}
ROOT=${ROOT%/}
uid=${XAPSD_UID:-65532}
gid=${XAPSD_GID:-65532}
config_volume=/tmp/docker-mailserver/xapsd

say() { printf 'docker-mailserver-install.sh: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

if [ -z "${MODULEDIR:-}" ]; then
	# mail_plugin_dir is where Dovecot loads plugins from; ask the image's
	# own Dovecot rather than assume Debian's path.
	MODULEDIR=$(doveconf -h mail_plugin_dir 2>/dev/null || true)
	MODULEDIR=${MODULEDIR:-/usr/lib/dovecot/modules}
fi
if [ -z "${SETTINGSDIR:-}" ]; then
	# Dovecot 2.4 loads settings modules from <its compiled-in module
	# folder>/settings, whatever mail_plugin_dir says.
	SETTINGSDIR=$MODULEDIR/settings
	if [ -r /usr/lib/dovecot/dovecot-config ]; then
		# shellcheck source=/dev/null disable=SC2154
		compiled=$(. /usr/lib/dovecot/dovecot-config && echo "${dovecot_moduledir:-}")
		[ -z "$compiled" ] || SETTINGSDIR=$compiled/settings
	fi
fi

[[ $uid =~ ^[0-9]+$ && $gid =~ ^[0-9]+$ ]] || die "XAPSD_UID and XAPSD_GID must be numbers, not '$uid' and '$gid'"

# The build folder says which Dovecot the plugin was compiled for
# (dovecot/Makefile leaves a dovecot-<version> stamp there).
stamp=$(find "$SRC/dovecot/build" -maxdepth 1 -name 'dovecot-*' 2>/dev/null | head -n 1 || true)
[ -n "$stamp" ] || die "$SRC/dovecot/build has no plugin; run scripts/build.sh first"
built_for=${stamp##*/dovecot-}
if command -v "${DOVECOT:-dovecot}" >/dev/null 2>&1; then
	image_has=$("${DOVECOT:-dovecot}" --version | cut -d' ' -f1)
	[ "$image_has" = "$built_for" ] || die "the plugin was built for Dovecot $built_for, this image has $image_has; build it in this image (scripts/build.sh)"
fi
plugins=("$SRC"/dovecot/build/lib25_xaps_imap_plugin.so "$SRC"/dovecot/build/lib25_xaps_push_notification_plugin.so)
# With a settings module the plugin reads Dovecot 2.4's settings framework,
# else plugin { } (2.3); the snippet is in the syntax that goes with it.
settings=$SRC/dovecot/build/settings/libxaps_settings.so
if [ -f "$settings" ]; then
	snippet=$SRC/configs/dovecot/2.4/95-xaps.conf
else
	snippet=$SRC/configs/dovecot/2.3/95-xaps.conf
	settings=
fi
for f in "$SRC/bin/xapsd" "${plugins[@]}" ${settings:+"$settings"} "$snippet" \
	"$SRC/configs/supervisord/xapsd.conf" "$SRC/scripts/supervisord-start.sh"; do
	[ -f "$f" ] || die "$f is missing; run scripts/build.sh first"
done

install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT$MODULEDIR" "$ROOT/etc/dovecot/conf.d" \
	"$ROOT/etc/supervisor/conf.d" "$ROOT/usr/local/libexec/xapsd"
install -m 0755 "$SRC/bin/xapsd" "$ROOT/usr/local/bin/xapsd"
install -m 0644 "${plugins[@]}" "$ROOT$MODULEDIR/"
if [ -n "$settings" ]; then
	install -d -m 0755 "$ROOT$SETTINGSDIR"
	install -m 0644 "$settings" "$ROOT$SETTINGSDIR/"
fi
install -m 0644 "$snippet" "$ROOT/etc/dovecot/conf.d/95-xaps.conf"
install -m 0644 "$SRC/configs/supervisord/xapsd.conf" "$ROOT/etc/supervisor/conf.d/xapsd.conf"
install -m 0755 "$SRC/scripts/supervisord-start.sh" "$ROOT/usr/local/libexec/xapsd/start"

# The unprivileged user xapsd runs as, with fixed ids (see XAPSD_UID). Its
# state folder is in a volume that does not exist yet; the start script
# creates and hands it over.
# owner_of FILE ID: the name that has ID in the passwd or group file.
owner_of() { awk -F: -v id="$2" '$3 == id { print $1; exit }' "$ROOT/etc/$1" 2>/dev/null; }
if grep -q '^xapsd:' "$ROOT/etc/passwd" 2>/dev/null; then
	have=$(awk -F: '$1 == "xapsd" { print $3 ":" $4 }' "$ROOT/etc/passwd")
	[ "$have" = "$uid:$gid" ] || die "the image has a user xapsd with ids $have, not $uid:$gid"
else
	taken=$(owner_of group "$gid")
	if ! grep -q '^xapsd:' "$ROOT/etc/group" 2>/dev/null; then
		[ -z "$taken" ] || die "gid $gid is the group $taken's in this image; choose another with XAPSD_GID (--build-arg XAPSD_GID=...)"
		groupadd ${ROOT:+--prefix "$ROOT"} --system --gid "$gid" xapsd
	elif [ "$taken" != xapsd ]; then
		die "the image has a group xapsd whose gid is not $gid"
	fi
	taken=$(owner_of passwd "$uid")
	[ -z "$taken" ] || die "uid $uid is the user $taken's in this image; choose another with XAPSD_UID (--build-arg XAPSD_UID=...)"
	useradd ${ROOT:+--prefix "$ROOT"} --system --uid "$uid" --gid "$gid" --no-create-home \
		--home-dir /var/mail-state/lib-xapsd --shell /usr/sbin/nologin \
		--comment "xapsd push daemon" xapsd
fi

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

say "installed xapsd $("$ROOT/usr/local/bin/xapsd" --version 2>/dev/null | sed 's/^xapsd //') and the plugin for Dovecot $built_for into ${ROOT:-/} (plugins in $MODULEDIR)"
