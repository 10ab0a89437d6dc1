#!/usr/bin/env bash
# Smoke test of the xaps Dovecot plugins against a real, throw-away Dovecot 2.3.
#
# Builds the plugins, writes a self-contained Dovecot configuration into a
# temporary directory, starts `dovecot -F` on 127.0.0.1 high ports together with
# a stand-in for xapsd (standin.py), runs the IMAP/LMTP checks (checks.py) and
# tears everything down again.
#
# Run as root (Dovecot must switch to the mail user):  dovecot/test/smoke.sh
# Environment:
#   KEEP=1            keep the temporary directory (configuration, logs, mail)
#   XAPS_TEST_UID     uid/gid owning the test mailboxes (default 1000)
#   VALGRIND=1        run the imap and lmtp processes under valgrind and fail
#                     on any memory error it reports in them (time bounds of
#                     the checks are stretched accordingly)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
mail_uid=${XAPS_TEST_UID:-1000}

if [ "$(id -u)" != 0 ]; then
	echo "smoke.sh: must run as root (Dovecot switches to uid $mail_uid)" >&2
	exit 2
fi
tools="dovecot python3 make"
[ "${VALGRIND:-0}" = 1 ] && tools="$tools valgrind"
for tool in $tools; do
	command -v "$tool" >/dev/null || { echo "smoke.sh: $tool not found" >&2; exit 2; }
done

make -C "$src" WERROR=1 >/dev/null

tmp=$(mktemp -d /tmp/xaps-smoke.XXXXXX)
dovecot_pid=
cleanup() {
	local rc=$?
	if [ -f "$tmp/standin.pid" ]; then
		kill "$(cat "$tmp/standin.pid")" 2>/dev/null || true
	fi
	if [ -n "$dovecot_pid" ]; then
		kill "$dovecot_pid" 2>/dev/null || true
		# The master stops its children before it exits.
		for _ in $(seq 50); do
			kill -0 "$dovecot_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$dovecot_pid" 2>/dev/null || true
	fi
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
trap cleanup EXIT INT TERM

# Three free ports on 127.0.0.1: IMAP, LMTP, stand-in daemon.
read -r imap_port lmtp_port http_port < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)

# Layout. The mail processes run as $mail_uid, so everything on the way to the
# homes must be traversable and the homes owned by that uid.
chmod 0755 "$tmp"
mkdir -p "$tmp/run" "$tmp/state" "$tmp/modules" "$tmp/home/alice" "$tmp/home/bob" "$tmp/home/carol" \
	"$tmp/home/dave" "$tmp/home/frank"
chown -R "$mail_uid:$mail_uid" "$tmp/home"
# erin's home belongs to root: a delivery to her fails at DATA, the way a
# full disk or a broken home does, after other recipients were saved.
mkdir -p "$tmp/home/erin"

# Dovecot looks for mail plugins in one directory; give it the system modules
# plus the freshly built ones without touching /usr/lib/dovecot/modules.
moduledir=$(. /usr/lib/dovecot/dovecot-config && echo "$dovecot_moduledir")
for m in "$moduledir"/*.so; do ln -s "$m" "$tmp/modules/"; done
cp "$src"/build/lib25_xaps_*_plugin.so "$tmp/modules/"

# passwd-file: user:password:uid:gid:gecos:home:shell:extra_fields
cat >"$tmp/users" <<EOF
alice:{PLAIN}secret:$mail_uid:$mail_uid::$tmp/home/alice::
bob:{PLAIN}secret:$mail_uid:$mail_uid::$tmp/home/bob::userdb_xaps_alias=bob@alias.example
EOF
# carol overrides the plugin setting through userdb; extra fields are split on
# spaces, so her xaps_config tokens are separated by tabs.
printf 'carol:{PLAIN}secret:%s:%s::%s::userdb_xaps_config=url=http://127.0.0.1:%s\tmailbox_confirm=no\ttimeout_msecs=2000\n' \
	"$mail_uid" "$mail_uid" "$tmp/home/carol" "$http_port" >>"$tmp/users"
# dave's xaps_config has no url: the plugins must disable themselves for him.
echo "dave:{PLAIN}secret:$mail_uid:$mail_uid::$tmp/home/dave::userdb_xaps_config=max_retries=1" >>"$tmp/users"
# frank is over quota as soon as a message is bigger than 1 KiB.
echo "erin:{PLAIN}secret:$mail_uid:$mail_uid::$tmp/home/erin::" >>"$tmp/users"
echo "frank:{PLAIN}secret:$mail_uid:$mail_uid::$tmp/home/frank::userdb_quota_rule=*:storage=1K" >>"$tmp/users"
chmod 0644 "$tmp/users"

sed -e "s|@TMP@|$tmp|g" -e "s|@IMAP_PORT@|$imap_port|g" \
    -e "s|@LMTP_PORT@|$lmtp_port|g" -e "s|@HTTP_PORT@|$http_port|g" \
    "$here/dovecot.conf.in" >"$tmp/dovecot.conf"

slow=1
if [ "${VALGRIND:-0}" = 1 ]; then
	# Every imap and lmtp process starts under valgrind; each writes its
	# report to its own file.
	mkdir -m 1777 "$tmp/valgrind"
	libexec=$(dirname "$moduledir")
	vg="/usr/bin/valgrind --quiet --vgdb=no --error-limit=no --leak-check=no --track-fds=no"
	cat >>"$tmp/dovecot.conf" <<EOF
service imap {
  executable = $vg --log-file=$tmp/valgrind/imap.%p.log $libexec/imap
}
service lmtp {
  executable = $vg --log-file=$tmp/valgrind/lmtp.%p.log $libexec/lmtp
}
EOF
	slow=4
fi

dovecot -F -c "$tmp/dovecot.conf" &
dovecot_pid=$!

python3 "$here/checks.py" --imap-port "$imap_port" --lmtp-port "$lmtp_port" \
	--http-port "$http_port" --dir "$tmp" --standin "$here/standin.py" \
	--log "$tmp/dovecot.log" --slow "$slow"

if [ "${VALGRIND:-0}" = 1 ]; then
	# Let the last processes exit so that their reports are complete.
	kill "$dovecot_pid" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$dovecot_pid" 2>/dev/null || break; sleep 0.1; done
	dovecot_pid=
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
