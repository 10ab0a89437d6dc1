#!/usr/bin/env bash
# Smoke test of the xaps Dovecot plugins against a real, throw-away Dovecot:
# this machine's (`make -C dovecot check`; 2.3.19 on Debian 12), or the one
# inside a Debian root given with DOVECOT_ROOT (the roots test/deps.sh
# prepares, test/dovecot-roots).
#
# Builds the plugins, writes a self-contained Dovecot configuration into a
# temporary directory, starts `dovecot -F` on 127.0.0.1 high ports together with
# a stand-in for xapsd (standin.py), runs the IMAP/LMTP checks (checks.py) and
# tears everything down again.
#
# Run as root (Dovecot must switch to the mail user):  dovecot/test/smoke.sh
# Environment:
#   DOVECOT_ROOT=DIR  build and run Dovecot inside this root (chroot); a chroot
#                     shares the host's network, so the checks reach it
#   KEEP=1            keep the temporary directory (configuration, logs, mail)
#   XAPS_TEST_UID     uid/gid owning the test mailboxes (default 1000)
#   VALGRIND=1        run the imap and lmtp processes under valgrind and fail
#                     on any memory error it reports in them (time bounds of
#                     the checks are stretched accordingly)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mail_uid=${XAPS_TEST_UID:-1000}
root=${DOVECOT_ROOT:-}

if [ "$(id -u)" != 0 ]; then
	echo "smoke.sh: must run as root (Dovecot switches to uid $mail_uid)" >&2
	exit 2
fi
for tool in python3 make; do
	command -v "$tool" >/dev/null || { echo "smoke.sh: $tool not found" >&2; exit 2; }
done
command -v unshare >/dev/null || { echo "smoke.sh: unshare not found" >&2; exit 2; }
if [ -n "$root" ]; then
	root=$(cd "$root" && pwd)
	root=${root%/}
fi
[ -x "$root/usr/sbin/dovecot" ] || { echo "smoke.sh: no Dovecot in ${root:-/usr/sbin}" >&2; exit 2; }
if [ "${VALGRIND:-0}" = 1 ] && [ ! -x "$root/usr/bin/valgrind" ]; then
	echo "smoke.sh: VALGRIND=1 needs valgrind${root:+ inside $root}" >&2
	exit 2
fi

# Everything the test writes is under $tmp; Dovecot sees it as $inside (the
# same path unless it runs in a root).
tmp=$(mktemp -d "$root/tmp/xaps-smoke.XXXXXX")
inside=${tmp#"$root"}
dovecot_pid=
cleanup() {
	local rc=$?
	if [ -f "$tmp/standin.pid" ]; then
		kill "$(cat "$tmp/standin.pid")" 2>/dev/null || true
	fi
	stop_dovecot
	if [ "$rc" != 0 ] && [ -f "$tmp/dovecot.log" ]; then
		echo "---- last lines of $tmp/dovecot.log ----" >&2
		tail -n 40 "$tmp/dovecot.log" >&2
	fi
	if [ "${KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
		echo "smoke.sh: kept $tmp" >&2
	else
		rm -rf "$tmp"
	fi
	exit "$rc"
}
stop_dovecot() {
	[ -n "$dovecot_pid" ] || return 0
	# The master stops its children before it exits.
	kill "$(cat "$tmp/run/master.pid" 2>/dev/null || echo "$dovecot_pid")" 2>/dev/null || true
	for _ in $(seq 100); do
		kill -0 "$dovecot_pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$dovecot_pid" 2>/dev/null || true
	wait "$dovecot_pid" 2>/dev/null || true
	dovecot_pid=
}
trap cleanup EXIT INT TERM

# Build (inside the root for a root's Dovecot) and put the plugins where the
# test configuration's mail_plugin_dir points. The settings probe says how
# the plugin reads its settings, and so which configuration the test writes:
# plugin { } in 2.3's syntax, or the settings framework in 2.4's.
chmod 0755 "$tmp"
mkdir -p "$tmp/run" "$tmp/state" "$tmp/modules"
built=$("$here/build-in-root.sh" "${root:-/}" "$tmp/modules")
built_value() { echo "$built" | sed -n "s/^$1 //p"; }
version=$(built_value version)
settings=$(built_value settings)
moduledir=$(built_value moduledir)
libexecdir=$(built_value libexecdir)
# This run's settings module, mounted over the root's folder of them.
settings_bind=()
[ -d "$tmp/modules/settings" ] && settings_bind=(--bind "$tmp/modules/settings" "$moduledir/settings")
# Dovecot looks for mail plugins in one directory; give it the system modules
# (as seen by Dovecot) plus the freshly built ones.
for m in "$root$moduledir"/*.so; do
	case "$m" in */lib25_xaps_*) continue ;; esac
	ln -s "$moduledir/$(basename "$m")" "$tmp/modules/"
done
case "$settings" in
plugin_env) series=23 ;;
framework) series=24 ;;
*) echo "smoke.sh: the settings probe says '$settings'" >&2; exit 2 ;;
esac
if [ "$series" = 24 ] && [ ${#settings_bind[@]} = 0 ]; then
	echo "smoke.sh: no settings module was built for Dovecot $version" >&2
	exit 2
fi
echo "smoke.sh: Dovecot $version${root:+ in $root} (settings: $settings)"

# Three free ports on 127.0.0.1: IMAP, LMTP, stand-in daemon.
read -r imap_port lmtp_port http_port < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)

# The mail processes run as $mail_uid, so everything on the way to the homes
# must be traversable and the homes owned by that uid. erin's home belongs to
# root: a delivery to her fails at DATA, the way a full disk or a broken home
# does, after other recipients were saved.
for u in alice bob carol dave erin frank gina hank; do mkdir -p "$tmp/home/$u"; done
chown -R "$mail_uid:$mail_uid" "$tmp/home"
chown root:root "$tmp/home/erin"

# passwd-file: user:password:uid:gid:gecos:home:shell:extra_fields
# bob's Username comes from the xaps_alias userdb field (user_lookup); carol
# turns the mailbox confirmations off through userdb; dave's plugin settings
# lack the URL, so the plugins must stay off for him; frank is over quota as
# soon as a message is bigger than 1 KiB; gina's timeout is 6 s, longer than
# the plugin's built-in default of 5 s. Everybody's URL has a path and a
# query (which the plugin replaces), but hank's has neither (and his
# timeout is long enough for a process under valgrind on a busy machine).
user() { echo "$1:{PLAIN}secret:$mail_uid:$mail_uid::$inside/home/$1::$2"; }
xaps_url="http://127.0.0.1:$http_port/ignored/path?also=ignored"
{
	user alice ""
	user bob "userdb_xaps_alias=bob@alias.example"
	if [ "$series" = 23 ]; then
		# Extra fields are split on spaces, so carol's xaps_config tokens
		# are separated by tabs.
		user carol "userdb_xaps_config=url=$xaps_url$(printf '\t')mailbox_confirm=no$(printf '\t')timeout_msecs=2000"
		user dave "userdb_xaps_config=max_retries=1"
		user erin ""
		user frank "userdb_quota_rule=*:storage=1K"
		user gina "userdb_xaps_config=url=$xaps_url$(printf '\t')timeout_msecs=6000"
		user hank "userdb_xaps_config=url=http://127.0.0.1:$http_port$(printf '\t')timeout_msecs=10000"
	else
		user carol "userdb_xaps_mailbox_confirm=no"
		user dave "userdb_xaps_url="
		user erin ""
		user frank "userdb_quota_storage_size=1K"
		user gina "userdb_xaps_timeout=6s"
		user hank "userdb_xaps_url=http://127.0.0.1:$http_port userdb_xaps_timeout=10s"
	fi
} >"$tmp/users"
chmod 0644 "$tmp/users"

# The shared secret, in a file only root can read (the config process reads
# it; the mail processes, running as the mail user, get it from there).
echo "smoke-secret-$$" >"$tmp/xaps.secret"
chmod 0600 "$tmp/xaps.secret"

template=$here/dovecot.conf.in
[ "$series" = 24 ] && template=$here/dovecot24.conf.in
sed -e "s|@TMP@|$inside|g" -e "s|@IMAP_PORT@|$imap_port|g" \
    -e "s|@LMTP_PORT@|$lmtp_port|g" -e "s|@XAPS_URL@|$xaps_url|g" \
    "$template" >"$tmp/dovecot.conf"

# Dovecot 2.4 checks the plugin settings when it reads its configuration: a
# bad value stops doveconf (and Dovecot's start) with the setting named.
if [ "$series" = 24 ]; then
	bad_settings=0
	while IFS='|' read -r line want; do
		key=${line%% =*}
		sed -e "s|^$key = .*|$line|" "$tmp/dovecot.conf" >"$tmp/bad.conf"
		grep -qx "$line" "$tmp/bad.conf" || echo "$line" >>"$tmp/bad.conf"
		if out=$("$here/in-root.sh" "${root:-/}" "${settings_bind[@]}" doveconf -c "$inside/bad.conf" -n 2>&1 >/dev/null); then
			echo "FAIL doveconf accepts '$line'"
			bad_settings=1
		elif [[ "$out" != *"$want"* ]]; then
			echo "FAIL doveconf on '$line': want '$want', got: $out"
			bad_settings=1
		else
			echo "ok   doveconf refuses '$line' naming it"
		fi
	done <<'EOF'
xaps_url = foo/bar|xaps_url: invalid URL 'foo/bar'
xaps_url = mailto:x@example.org|xaps_url: invalid URL 'mailto:x@example.org'
xaps_timeout = 0|xaps_timeout: must be more than 0
xaps_mailbox_confirm = maybe|xaps_mailbox_confirm: Invalid boolean value: maybe
xaps_max_retries = 1000|xaps_max_retries: 1000 is more than 100
EOF
	rm -f "$tmp/bad.conf"
	[ "$bad_settings" = 0 ] || exit 1
fi

slow=1
if [ "${VALGRIND:-0}" = 1 ]; then
	# Every imap and lmtp process starts under valgrind; each writes its
	# report to its own file.
	mkdir -m 1777 "$tmp/valgrind"
	vg="/usr/bin/valgrind --quiet --vgdb=no --error-limit=no --leak-check=no --track-fds=no"
	cat >>"$tmp/dovecot.conf" <<EOF
service imap {
  executable = $vg --log-file=$inside/valgrind/imap.%p.log $libexecdir/imap
}
service lmtp {
  executable = $vg --log-file=$inside/valgrind/lmtp.%p.log $libexecdir/lmtp
}
EOF
	slow=4
fi

# A private mount namespace gives a root a /proc (valgrind needs it) and
# Dovecot this run's settings module, both gone with the test.
"$here/in-root.sh" "${root:-/}" "${settings_bind[@]}" dovecot -F -c "$inside/dovecot.conf" &
dovecot_pid=$!

python3 "$here/checks.py" --imap-port "$imap_port" --lmtp-port "$lmtp_port" \
	--http-port "$http_port" --dir "$tmp" --standin "$here/standin.py" \
	--log "$tmp/dovecot.log" --slow "$slow" --secret "smoke-secret-$$"

if [ "${VALGRIND:-0}" = 1 ]; then
	# Let the last processes exit so that their reports are complete.
	stop_dovecot
	reports=$(find "$tmp/valgrind" -name '*.log' | wc -l)
	if [ "$reports" -eq 0 ]; then
		echo "FAIL valgrind: no process ran under valgrind" >&2
		exit 1
	fi
	dirty=$(find "$tmp/valgrind" -name '*.log' -size +0 | sort)
	if [ -n "$dirty" ]; then
		echo "FAIL valgrind reported memory errors:" >&2
		for f in $dirty; do
			echo "---- $f" >&2
			head -n 60 "$f" >&2
		done
		exit 1
	fi
	echo "ok   valgrind: no memory errors in $reports imap/lmtp processes"
fi
