#!/usr/bin/env bash
# Packaging test: runs the install scripts the Dockerfile and the guides use,
# on this machine, and checks what they install.
#
#   bash test/packaging/packaging_test.sh      (as root; CI runs it in make test)
#
# - scripts/build.sh into temporary DESTDIRs (PREFIX /usr and /usr/local):
#   files, modes, version, configuration files never overwritten; make build
#   runs it (a static binary), and deb.sh refuses a dynamic one;
# - the installed systemd unit passes `systemd-analyze verify` (ExecStart
#   pointing at the built binary), sysusers.d and tmpfiles.d work in the
#   DESTDIR as root folder;
# - `doveconf -n` accepts a configuration that includes the installed
#   95-xaps.conf, and Dovecot's imap loads the installed plugin;
# - the supervisord program parses (python3 configparser);
# - scripts/docker-mailserver-install.sh into a fake root, twice, and then
#   the docker-mailserver setup of docs/docker-mailserver.md in that root:
#   xapsd from the fake root in dry-run, a registration through the installed
#   plugin, `xapsd devices list`, `xapsd test-push`, /readyz, /metrics, stop;
# - the Dockerfile refers only to stages and scripts that exist;
# - the Prometheus rules and the Grafana dashboard (go test ./test/packaging,
#   promtool when installed).
#
# Needs go, make, python3, dovecot-core, dovecot-imapd and dovecot-dev (as
# for make test) and systemd's tools. The last line is "N passed, M failed";
# the exit status is non-zero when anything failed. KEEP=1 keeps the
# temporary folder.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)

if [ "$(id -u)" != 0 ]; then
	echo "packaging_test.sh: must run as root (the checks chown files and run Dovecot as a mail user)" >&2
	exit 2
fi

# Short path: Dovecot's socket names under base_dir must stay below 108 bytes.
tmp=$(mktemp -d /tmp/xaps-pkg.XXXXXX)
chmod 0755 "$tmp"
xapsd_pid=
cleanup() {
	local rc=$?
	if [ -n "$xapsd_pid" ]; then kill "$xapsd_pid" 2>/dev/null || true; fi
	if [ "${KEEP:-0}" = 1 ]; then
		echo "packaging_test.sh: kept $tmp" >&2
	else
		rm -rf "$tmp"
	fi
	exit "$rc"
}
trap cleanup EXIT INT TERM

export src tmp
export d1=$tmp/destdir-usr d2=$tmp/destdir-local root=$tmp/dms-root

pass=0
fail=0
skipped=()

# run NAME FUNCTION: each check runs in its own bash with errexit, so a
# check stops at its first failing command, and one failing check does not
# stop the others.
run() {
	local name=$1 fn=$2 out rc=0
	out=$(mktemp "$tmp/out.XXXXXX")
	bash -c "set -euo pipefail; $(declare -f); $fn" >"$out" 2>&1 || rc=$?
	if [ "$rc" = 0 ]; then
		pass=$((pass + 1))
		echo "ok    $name"
	elif [ "$rc" = 77 ]; then
		skipped+=("$name: $(tail -n 1 "$out")")
		echo "skip  $name: $(tail -n 1 "$out")"
	else
		fail=$((fail + 1))
		echo "FAIL  $name"
		tail -n 40 "$out" | sed 's/^/      /'
	fi
}

# --- helpers used inside checks ------------------------------------------

die() { echo "$*" >&2; exit 1; }

# want_mode PATH MODE: PATH is a regular file (or folder) with that mode.
want_mode() {
	[ -e "$1" ] || die "missing: $1"
	local m
	m=$(stat -c '%a' "$1")
	[ "$m" = "$2" ] || die "$1: mode $m, want $2"
}

free_ports() {
	python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# http METHOD URL [BODY]: prints "STATUS BODY".
http() {
	python3 - "$@" <<'EOF'
import sys, urllib.request, urllib.error
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(url, data=data, method=method)
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
EOF
}

# moduledir: Dovecot's module folder, as the plugin's Makefile finds it.
moduledir() {
	# shellcheck source=/dev/null disable=SC2154
	(. /usr/lib/dovecot/dovecot-config && echo "$dovecot_moduledir")
}

# dovecot_modules DIR PLUGINDIR: a mail_plugin_dir with Dovecot's own
# modules plus the xaps ones from PLUGINDIR (as dovecot/README.md does).
dovecot_modules() {
	mkdir -p "$1"
	local f
	for f in /usr/lib/dovecot/modules/*.so; do ln -sf "$f" "$1/"; done
	rm -f "$1"/lib25_xaps_*
	cp "$2"/lib25_xaps_imap_plugin.so "$2"/lib25_xaps_push_notification_plugin.so "$1/"
}

# --- checks ---------------------------------------------------------------

check_scripts_lint() {
	local scripts=("$src"/scripts/*.sh "$src"/test/packaging/packaging_test.sh "$src"/test/container/*.sh
		"$src"/test/container/dms-standin/usr/local/bin/start-mailserver.sh)
	for f in "${scripts[@]}"; do
		bash -n "$f"
		head -n 2 "$f" | grep -q '^# ' || die "$f: no header comment"
		grep -q '^set -euo pipefail$' "$f" || die "$f: no set -euo pipefail"
		[ -x "$f" ] || die "$f: not executable"
	done
	if command -v shellcheck >/dev/null; then
		shellcheck "${scripts[@]}"
	else
		echo "shellcheck not installed; only bash -n"
	fi
}

check_build_destdir() {
	"$src/scripts/build.sh" --destdir "$d1" --systemd
	want_mode "$d1/usr/bin/xapsd" 755
	local moddir
	moddir=$(moduledir)
	want_mode "$d1$moddir/lib25_xaps_imap_plugin.so" 644
	want_mode "$d1$moddir/lib25_xaps_push_notification_plugin.so" 644
	want_mode "$d1/etc/dovecot/conf.d/95-xaps.conf" 644
	want_mode "$d1/etc/xapsd/xapsd.yaml" 644
	want_mode "$d1/var/lib/xapsd" 700
	want_mode "$d1/usr/lib/systemd/system/xapsd.service" 644
	want_mode "$d1/usr/lib/sysusers.d/xapsd.conf" 644
	want_mode "$d1/usr/lib/tmpfiles.d/xapsd.conf" 644
	cmp "$src/configs/dovecot/2.3/95-xaps.conf" "$d1/etc/dovecot/conf.d/95-xaps.conf"
	cmp "$src/configs/xapsd/xapsd.yaml" "$d1/etc/xapsd/xapsd.yaml"
	cmp "$src/configs/systemd/xapsd.service" "$d1/usr/lib/systemd/system/xapsd.service"
	cmp "$src/configs/systemd/xapsd.sysusers" "$d1/usr/lib/sysusers.d/xapsd.conf"
	cmp "$src/configs/systemd/xapsd.tmpfiles" "$d1/usr/lib/tmpfiles.d/xapsd.conf"
	# Nothing else: a stray file would be shipped too.
	local n
	n=$(find "$d1" -type f | wc -l)
	[ "$n" = 8 ] || { find "$d1" -type f; die "$n files installed, want 8"; }
}

check_installed_binary() {
	local want v
	want=$(git -C "$src" describe --always --dirty 2>/dev/null || echo dev)
	v=$("$d1/usr/bin/xapsd" --version)
	[ "$v" = "xapsd $want" ] || die "--version says '$v', want 'xapsd $want' (ldflags)"
	# Static (CGO_ENABLED=0), so the same binary runs in any image.
	if command -v ldd >/dev/null && ldd "$d1/usr/bin/xapsd" >/dev/null 2>&1; then
		ldd "$d1/usr/bin/xapsd"
		die "xapsd is dynamically linked"
	fi
	# The installed sample is a valid configuration as it is.
	"$d1/usr/bin/xapsd" --check-config --config "$d1/etc/xapsd/xapsd.yaml" >"$tmp/check.out"
	grep -q '^databaseFile: /var/lib/xapsd/database.json' "$tmp/check.out" || { cat "$tmp/check.out"; die "unexpected effective configuration"; }
	# The unit's ExecReload check runs at every reload: it may write
	# problems into the journal, never the whole configuration.
	local reload
	reload=$(sed -n 's|^ExecReload=\(/usr/bin/xapsd .*--check-config.*\)$|\1|p' "$d1/usr/lib/systemd/system/xapsd.service")
	[ -n "$reload" ] || die "the unit has no ExecReload with --check-config"
	reload=${reload//\/usr\/bin\/xapsd/$d1/usr/bin/xapsd}
	reload=${reload//\/etc\/xapsd\/xapsd.yaml/$d1/etc/xapsd/xapsd.yaml}
	# shellcheck disable=SC2086 # the unit's words, split as systemd does
	$reload >"$tmp/reload.out" || die "ExecReload's check failed on the sample: $reload"
	[ ! -s "$tmp/reload.out" ] || { cat "$tmp/reload.out"; die "ExecReload's check prints the configuration into the journal"; }
}

check_make_run() {
	local cmd
	cmd=$(make -s -n -C "$src" run CONFIG=/srv/try/xapsd.yaml ARGS="--check-config --quiet" | tail -n 1)
	[ "$cmd" = "bin/xapsd --config /srv/try/xapsd.yaml --check-config --quiet" ] || die "make run CONFIG= ARGS= runs '$cmd'"
	cmd=$(make -s -n -C "$src" run | tail -n 1 | sed 's/ *$//')
	[ "$cmd" = "bin/xapsd --config configs/dev/xapsd.yaml" ] || die "make run runs '$cmd'"
}

# dynamic FILE: FILE asks for a program interpreter or shared libraries.
dynamic() {
	local elf
	elf=$(readelf -lW -d "$1")
	grep -q -e 'program interpreter' -e '(NEEDED)' <<<"$elf"
}

# make build (and with it make run, bench and soak) is scripts/build.sh: the
# static binary that make deb DEB_ARGS=--prebuilt-daemon packages.
check_make_build_static() {
	make -s -C "$src" build >"$tmp/make-build.out" 2>&1 || { cat "$tmp/make-build.out"; die "make build failed"; }
	if dynamic "$src/bin/xapsd"; then
		readelf -lW -d "$src/bin/xapsd" | grep -e interpreter -e NEEDED
		die "make build made a dynamically linked bin/xapsd"
	fi
	grep -q '^build.sh: building bin/xapsd' "$tmp/make-build.out" || { cat "$tmp/make-build.out"; die "make build does not run scripts/build.sh"; }
}

# The package says its xapsd is static (lintian override, no libc in
# Depends): deb.sh --prebuilt-daemon refuses one that is not.
check_deb_refuses_dynamic_daemon() {
	if ! command -v dpkg-deb >/dev/null || ! dpkg-query -W dovecot-dev >/dev/null 2>&1; then
		echo "SKIPPED: no dpkg-dev or dovecot-dev (test/deps.sh installs them)"
		exit 77
	fi
	local copy=$tmp/deb-dynamic p
	for p in README.md Makefile configs scripts dovecot/Makefile dovecot/probe.sh dovecot/probes dovecot/src cmd internal go.mod go.sum; do
		mkdir -p "$(dirname "$copy/$p")"
		cp -r "$src/$p" "$copy/$p"
	done
	(cd "$copy" && CGO_ENABLED=1 go build -o bin/xapsd ./cmd/xapsd)
	dynamic "$copy/bin/xapsd" || die "CGO_ENABLED=1 did not make a dynamic binary; the check below would prove nothing"
	if env VERSION=test "$copy/scripts/deb.sh" --prebuilt-daemon --out "$copy/dist" >"$copy/deb.out" 2>&1; then
		cat "$copy/deb.out"
		die "deb.sh packaged a dynamically linked xapsd as static"
	fi
	grep -q 'dynamically linked, but the package says it is static' "$copy/deb.out" || { cat "$copy/deb.out"; die "deb.sh failed for another reason"; }
	[ -z "$(ls -A "$copy/dist" 2>/dev/null)" ] || die "deb.sh left a package behind"
}

check_build_prefix_local() {
	PREFIX=/usr/local "$src/scripts/build.sh" --destdir "$d2" --no-plugin --systemd
	want_mode "$d2/usr/local/bin/xapsd" 755
	want_mode "$d2/usr/local/lib/systemd/system/xapsd.service" 644
	want_mode "$d2/usr/local/lib/sysusers.d/xapsd.conf" 644
	want_mode "$d2/usr/local/lib/tmpfiles.d/xapsd.conf" 644
	[ ! -e "$d2/usr/bin/xapsd" ] || die "installed into /usr/bin despite PREFIX=/usr/local"
	[ ! -e "$d2/etc/dovecot" ] || die "--no-plugin installed Dovecot files"
	grep -q '^ExecStart=/usr/local/bin/xapsd --config /etc/xapsd/xapsd.yaml$' "$d2/usr/local/lib/systemd/system/xapsd.service" ||
		die "ExecStart not rewritten for PREFIX=/usr/local"
	! grep -q '/usr/bin/xapsd' "$d2/usr/local/lib/systemd/system/xapsd.service" || die "unit still names /usr/bin/xapsd"
	# systemd looks there.
	systemd-analyze unit-paths | grep -qx /usr/local/lib/systemd/system
}

check_config_kept() {
	local d=$tmp/destdir-keep
	"$src/scripts/build.sh" --destdir "$d" >/dev/null
	echo "loglevel: debug" >>"$d/etc/xapsd/xapsd.yaml"
	echo "# local change" >>"$d/etc/dovecot/conf.d/95-xaps.conf"
	"$src/scripts/build.sh" --destdir "$d" >"$tmp/keep.out"
	tail -n 1 "$d/etc/xapsd/xapsd.yaml" | grep -qx 'loglevel: debug' || die "xapsd.yaml overwritten"
	tail -n 1 "$d/etc/dovecot/conf.d/95-xaps.conf" | grep -qx '# local change' || die "95-xaps.conf overwritten"
	cmp "$src/configs/xapsd/xapsd.yaml" "$d/etc/xapsd/xapsd.yaml.new"
	cmp "$src/configs/dovecot/2.3/95-xaps.conf" "$d/etc/dovecot/conf.d/95-xaps.conf.new"
	grep -q "kept $d/etc/xapsd/xapsd.yaml" "$tmp/keep.out" || die "no note about the kept file"
	# An unchanged file is simply reinstalled, without a .new.
	local c=$tmp/destdir-same
	"$src/scripts/build.sh" --destdir "$c" --no-plugin >/dev/null
	"$src/scripts/build.sh" --destdir "$c" --no-plugin >/dev/null
	[ ! -e "$c/etc/xapsd/xapsd.yaml.new" ] || die ".new written for an unchanged file"
}

check_systemd_verify() {
	local u=$tmp/unit
	mkdir -p "$u"
	sed "s|/usr/bin/xapsd|$d1/usr/bin/xapsd|g" "$d1/usr/lib/systemd/system/xapsd.service" >"$u/xapsd.service"
	# verify exits 0 on unknown keys and bad values but prints them: any
	# output is a failure.
	systemd-analyze verify "$u/xapsd.service" >"$u/verify.out" 2>&1 || { cat "$u/verify.out"; die "systemd-analyze verify failed"; }
	if [ -s "$u/verify.out" ]; then cat "$u/verify.out"; die "systemd-analyze verify complained"; fi
	# And it does notice a broken unit (so the check above means something).
	sed 's|^Restart=on-failure|Restart=sometimes|' "$u/xapsd.service" >"$u/broken.service"
	systemd-analyze verify "$u/broken.service" >"$u/broken.out" 2>&1 || true
	grep -q 'restart specifier' "$u/broken.out" || die "systemd-analyze verify did not notice a bad Restart="
}

check_sysusers_tmpfiles() {
	systemd-sysusers --root="$d1" >"$tmp/sysusers.out" 2>&1
	grep -q '^xapsd:x:[0-9]*:[0-9]*:.*:/var/lib/xapsd:' "$d1/etc/passwd" || die "no xapsd user in $d1/etc/passwd"
	local uid gid
	uid=$(awk -F: '$1 == "xapsd" { print $3 }' "$d1/etc/passwd")
	gid=$(awk -F: '$1 == "xapsd" { print $3 }' "$d1/etc/group")
	systemd-tmpfiles --root="$d1" --create xapsd.conf 2>&1 | tee "$tmp/tmpfiles.out"
	[ ! -s "$tmp/tmpfiles.out" ] || die "systemd-tmpfiles complained"
	[ "$(stat -c '%a %u %g' "$d1/var/lib/xapsd")" = "700 $uid $gid" ] || die "/var/lib/xapsd: $(stat -c '%a %u %g' "$d1/var/lib/xapsd"), want 700 $uid $gid"
	[ "$(stat -c '%a %u %g' "$d1/etc/xapsd")" = "750 0 $gid" ] || die "/etc/xapsd: $(stat -c '%a %u %g' "$d1/etc/xapsd"), want 750 0 $gid"
	# The unit's own folder modes agree with tmpfiles (systemd warns otherwise).
	grep -qx 'StateDirectoryMode=0700' "$d1/usr/lib/systemd/system/xapsd.service"
	grep -qx 'ConfigurationDirectoryMode=0750' "$d1/usr/lib/systemd/system/xapsd.service"
}

check_doveconf() {
	local moddir dc=$tmp/doveconf
	moddir=$(moduledir)
	mkdir -p "$dc"
	dovecot_modules "$dc/modules" "$d1$moddir"
	cat >"$dc/dovecot.conf" <<EOF
protocols = imap lmtp
ssl = no
base_dir = $dc/run
mail_plugin_dir = $dc/modules
!include $d1/etc/dovecot/conf.d/95-xaps.conf
EOF
	doveconf -n -c "$dc/dovecot.conf" >"$dc/out" 2>"$dc/err" || { cat "$dc/err"; die "doveconf rejected the configuration"; }
	[ ! -s "$dc/err" ] || { cat "$dc/err"; die "doveconf warned"; }
	grep -q 'push_notification_driver = xaps' "$dc/out" || die "no push_notification_driver"
	grep -q 'xaps_config = url=http://127.0.0.1:11619' "$dc/out" || die "no xaps_config"
	python3 - "$dc/out" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
def plugins(proto):
    m = re.search(r"protocol %s \{\n  mail_plugins = \"?([^\"\n]*)" % proto, text)
    return m.group(1).split() if m else []
want = {"imap": ["notify", "push_notification", "xaps_push_notification", "xaps_imap"],
        "lmtp": ["notify", "push_notification", "xaps_push_notification"],
        "lda": ["notify", "push_notification", "xaps_push_notification"]}
for proto, names in want.items():
    if plugins(proto) != names:
        sys.exit("protocol %s: mail_plugins %s, want %s" % (proto, plugins(proto), names))
EOF
}

# imap_session CONF USER HOME COMMAND...: runs Dovecot's imap binary
# preauthenticated on stdin/stdout, one command at a time, and prints the
# transcript. IMAP_IN_ROOT=DIR runs the imap of that root (chroot).
imap_session() {
	python3 - "$@" <<'EOF'
import os, subprocess, sys
conf, user, home = sys.argv[1], sys.argv[2], sys.argv[3]
cmds = sys.argv[4:]
argv = ["/usr/lib/dovecot/imap", "-c", conf]
if os.environ.get("IMAP_IN_ROOT"):
    argv = ["chroot", os.environ["IMAP_IN_ROOT"]] + argv
p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     env={"USER": user, "HOME": home, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
out = [p.stdout.readline().decode()]
for i, c in enumerate(cmds + ["LOGOUT"]):
    tag = "t%d" % i
    p.stdin.write(("%s %s\r\n" % (tag, c)).encode()); p.stdin.flush()
    while True:
        line = p.stdout.readline().decode()
        if not line:
            break
        out.append(line)
        if line.startswith(tag + " "):
            break
p.stdin.close()
p.wait(timeout=10)
sys.stdout.write("".join(out))
EOF
}

# dovecot_user_conf DIR MODULES XAPS_CONF URL: a configuration for a
# standalone imap process running as nobody.
dovecot_user_conf() {
	local dir=$1
	mkdir -p "$dir/home"
	chown 65534:65534 "$dir/home"
	cat >"$dir/dovecot.conf" <<EOF
protocols = imap
ssl = no
base_dir = $dir/run
log_path = $dir/dovecot.log
mail_plugin_dir = $2
first_valid_uid = 100
first_valid_gid = 100
mail_uid = 65534
mail_gid = 65534
mail_location = maildir:$dir/home/Maildir
!include $3
plugin {
  xaps_config = url=$4 max_retries=0 timeout_msecs=5000
}
EOF
}

check_plugin_loads() {
	local moddir dir=$tmp/imap-load
	moddir=$(moduledir)
	dovecot_modules "$dir/modules" "$d1$moddir"
	dovecot_user_conf "$dir" "$dir/modules" "$d1/etc/dovecot/conf.d/95-xaps.conf" http://127.0.0.1:9
	imap_session "$dir/dovecot.conf" nobody "$dir/home" CAPABILITY >"$dir/out"
	grep -q '^\* CAPABILITY .*XAPPLEPUSHSERVICE' "$dir/out" || { cat "$dir/out" "$dir/dovecot.log" 2>/dev/null; die "no XAPPLEPUSHSERVICE: the installed plugin did not load"; }
}

check_supervisord_conf() {
	python3 - "$src/configs/supervisord/xapsd.conf" <<'EOF'
import configparser, shlex, sys
path = sys.argv[1]
# supervisord expands %(program_name)s itself: no interpolation here.
cp = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=True)
with open(path) as f:
    cp.read_file(f)
if cp.sections() != ["program:xapsd"]:
    sys.exit("sections %s, want [program:xapsd]" % cp.sections())
p = cp["program:xapsd"]
known = {"command", "process_name", "numprocs", "numprocs_start", "priority", "autostart", "startsecs",
         "startretries", "autorestart", "exitcodes", "stopsignal", "stopwaitsecs", "stopasgroup", "killasgroup",
         "user", "redirect_stderr", "stdout_logfile", "stdout_logfile_maxbytes", "stdout_logfile_backups",
         "stdout_capture_maxbytes", "stdout_events_enabled", "stdout_syslog", "stderr_logfile",
         "stderr_logfile_maxbytes", "stderr_logfile_backups", "stderr_capture_maxbytes", "stderr_events_enabled",
         "stderr_syslog", "environment", "directory", "umask", "serverurl"}
unknown = set(p) - known
if unknown:
    sys.exit("unknown supervisord keys: %s" % sorted(unknown))
cmd = shlex.split(p["command"])
if cmd[0] != "/usr/local/libexec/xapsd/start" or len(cmd) != 3:
    sys.exit("command runs %s; docker-mailserver-install.sh installs the start script "
             "/usr/local/libexec/xapsd/start CONFIG STATE" % cmd)
if not cmd[1].startswith("/tmp/docker-mailserver/"):
    sys.exit("the configuration must come from the config volume /tmp/docker-mailserver/")
if not cmd[2].startswith("/var/mail-state/"):
    sys.exit("the state must be in the state volume /var/mail-state/")
if p.get("user", "root") != "root":
    sys.exit("user=%s: the start script needs root to hand the folders over; it drops to xapsd itself" % p["user"])
if p.get("stopsignal", "TERM") not in ("TERM", "SIGTERM"):
    sys.exit("stopsignal %s: xapsd drains on SIGTERM" % p["stopsignal"])
# shutdownDrainTimeout + shutdownTimeout default to 2s + 6s, plus the registry's
# snapshot; supervisord must wait longer before SIGKILL, with room for admins
# who raise them.
if int(p.get("stopwaitsecs", "10")) <= 15:
    sys.exit("stopwaitsecs %s leaves no room above xapsd's shutdown budgets (2s + 6s by default)" % p.get("stopwaitsecs"))
if p.get("autorestart", "unexpected") not in ("true", "unexpected"):
    sys.exit("autorestart %s" % p["autorestart"])
# Started before and stopped after docker-mailserver's programs, which keep
# supervisord's default priority (999).
if int(p.get("priority", "999")) >= 999:
    sys.exit("priority %s: xapsd must start before and stop after Dovecot and Postfix (999)" % p.get("priority", "999 (default)"))
EOF
}

# image_etc ROOT: the account files of an image, for useradd --prefix.
image_etc() {
	mkdir -p "$1/etc"
	cp -p /etc/passwd /etc/group /etc/shadow /etc/gshadow "$1/etc/"
}

dms_install() {
	[ -f "$root/etc/passwd" ] || image_etc "$root"
	SRC=$src ROOT=$root "$src/scripts/docker-mailserver-install.sh"
}

dms_tree() {
	(cd "$root" && find . -printf '%p %y %m %l\n' | sort && find . -type f -exec sha256sum {} + | sort)
}

check_dms_install() {
	dms_install >"$tmp/dms1.out"
	local moddir=/usr/lib/dovecot/modules
	[ -z "$(doveconf -h mail_plugin_dir 2>/dev/null)" ] || moddir=$(doveconf -h mail_plugin_dir)
	want_mode "$root/usr/local/bin/xapsd" 755
	want_mode "$root$moddir/lib25_xaps_imap_plugin.so" 644
	want_mode "$root$moddir/lib25_xaps_push_notification_plugin.so" 644
	want_mode "$root/etc/dovecot/conf.d/95-xaps.conf" 644
	want_mode "$root/etc/supervisor/conf.d/xapsd.conf" 644
	want_mode "$root/usr/local/libexec/xapsd/start" 755
	cmp "$src/configs/supervisord/xapsd.conf" "$root/etc/supervisor/conf.d/xapsd.conf"
	cmp "$src/configs/dovecot/2.3/95-xaps.conf" "$root/etc/dovecot/conf.d/95-xaps.conf"
	cmp "$src/scripts/supervisord-start.sh" "$root/usr/local/libexec/xapsd/start"
	cmp "$src/bin/xapsd" "$root/usr/local/bin/xapsd"
	[ ! -e "$root$moddir/settings" ] || die "a settings module was installed for Dovecot 2.3"
	grep -q '^xapsd:x:65532:65532:xapsd push daemon:/var/mail-state/lib-xapsd:/usr/sbin/nologin$' "$root/etc/passwd" ||
		die "no xapsd system user with the documented ids (65532) in the image"
	grep -q '^xapsd:x:65532:$' "$root/etc/group" || die "no xapsd group with gid 65532 in the image"
	[ "$(readlink "$root/etc/xapsd")" = /tmp/docker-mailserver/xapsd ] || die "/etc/xapsd is not a link to the config volume"
	if [ -e "$root/tmp" ] || [ -e "$root/var" ]; then die "wrote into a volume path"; fi
	# Idempotent: a second run changes nothing.
	dms_tree >"$tmp/tree1"
	dms_install >"$tmp/dms2.out"
	dms_tree >"$tmp/tree2"
	diff "$tmp/tree1" "$tmp/tree2" || die "second run changed the tree"
	# An admin's own /etc/xapsd folder is left alone, with a warning.
	local r2=$tmp/dms-root-own
	image_etc "$r2"
	mkdir -p "$r2/etc/xapsd" && echo "loglevel: info" >"$r2/etc/xapsd/xapsd.yaml"
	SRC=$src ROOT=$r2 "$src/scripts/docker-mailserver-install.sh" >"$tmp/dms3.out" 2>&1
	if [ ! -f "$r2/etc/xapsd/xapsd.yaml" ] || [ -L "$r2/etc/xapsd" ]; then die "replaced a non-empty /etc/xapsd"; fi
	grep -q 'warning: .*not linking' "$tmp/dms3.out" || die "no warning about /etc/xapsd"
	# Without a build it refuses instead of installing half.
	local r3=$tmp/dms-root-nobuild
	if SRC=$tmp/nowhere ROOT=$r3 "$src/scripts/docker-mailserver-install.sh" >"$tmp/dms4.out" 2>&1; then
		die "installed from a tree without a build"
	fi
	grep -q 'run scripts/build.sh first' "$tmp/dms4.out"
	[ ! -e "$r3/usr" ] || die "wrote files before noticing the missing build"
	# Other ids on request; ids that belong to someone else are refused.
	local r4=$tmp/dms-root-ids
	image_etc "$r4"
	XAPSD_UID=64999 XAPSD_GID=64998 SRC=$src ROOT=$r4 "$src/scripts/docker-mailserver-install.sh" >"$tmp/dms5.out" 2>&1 ||
		{ cat "$tmp/dms5.out"; die "install with XAPSD_UID and XAPSD_GID failed"; }
	grep -q '^xapsd:x:64999:64998:' "$r4/etc/passwd" || die "XAPSD_UID/XAPSD_GID not used"
	local r5=$tmp/dms-root-taken
	image_etc "$r5"
	if XAPSD_GID=0 SRC=$src ROOT=$r5 "$src/scripts/docker-mailserver-install.sh" >"$tmp/dms6.out" 2>&1; then
		die "installed with the gid of the group root"
	fi
	grep -q "gid 0 is the group root's in this image; choose another with XAPSD_GID" "$tmp/dms6.out" || { cat "$tmp/dms6.out"; die "no clear refusal of a taken gid"; }
}

# The docker-mailserver setup of docs/docker-mailserver.md, inside the fake
# root: configuration in the config volume, state in /var/mail-state.
check_dms_flow() {
	local cfgdir=$root/tmp/docker-mailserver/xapsd state=$root/var/mail-state/lib-xapsd
	local port mport
	read -r port mport < <(free_ports 2)
	mkdir -p "$cfgdir"
	cat >"$cfgdir/xapsd.yaml" <<EOF
# As in docs/docker-mailserver.md, with test ports (free on 127.0.0.1, so
# only there) and dry-run.
listenAddr: 127.0.0.1
port: $port
databaseFile: $state/database.json
metricsListenAddr: 127.0.0.1:$mport
apnsEndpoint: dry-run
loglevel: debug
EOF
	# A credential file as the admin leaves it on the host: root's, 0600.
	echo "not a key" >"$cfgdir/push.key"
	chmod 0600 "$cfgdir/push.key"
	# As supervisord starts it: the start script, as root, with the
	# unprivileged user. The fake root's xapsd user does not exist on this
	# machine, so nobody stands in for it.
	local bin=$root/usr/local/bin/xapsd log=$tmp/dms-xapsd.log
	XAPSD=$bin XAPSD_USER=nobody "$root/usr/local/libexec/xapsd/start" "$cfgdir/xapsd.yaml" "$state" >"$log" 2>&1 &
	local pid=$!
	echo "$pid" >"$tmp/xapsd.pid"

	for _ in $(seq 100); do
		[ -S "$state/xapsd.sock" ] && http GET "http://127.0.0.1:$mport/healthz" 2>/dev/null | grep -q '^200' && break
		kill -0 "$pid" 2>/dev/null || { cat "$log"; die "xapsd exited at start"; }
		sleep 0.1
	done
	[ "$(stat -c '%a %U' "$state")" = "700 nobody" ] || die "state folder $(stat -c '%a %U' "$state"), want 700 nobody"
	[ "$(ps -o user= -p "$pid")" = nobody ] || die "xapsd runs as $(ps -o user= -p "$pid"), want the unprivileged user"
	[ "$(stat -c '%a %U %G' "$cfgdir/push.key")" = "640 root nogroup" ] ||
		die "credential file $(stat -c '%a %U %G' "$cfgdir/push.key"), want 640 root and the daemon's group"
	[ "$(stat -c '%a' "$state/xapsd.sock")" = 600 ] || die "admin socket mode $(stat -c '%a' "$state/xapsd.sock")"

	# iOS registers through the installed plugin and 95-xaps.conf.
	local dir=$tmp/dms-imap moddir=/usr/lib/dovecot/modules
	[ -z "$(doveconf -h mail_plugin_dir 2>/dev/null)" ] || moddir=$(doveconf -h mail_plugin_dir)
	dovecot_modules "$dir/modules" "$root$moddir"
	dovecot_user_conf "$dir" "$dir/modules" "$root/etc/dovecot/conf.d/95-xaps.conf" "http://127.0.0.1:$port"
	local token=2918390218931890821908309283098109381029309829018310983092892829
	local account=0715A26B-CA09-4730-A419-793000CA982E
	imap_session "$dir/dovecot.conf" nobody "$dir/home" \
		"XAPPLEPUSHSERVICE \"aps-version\" \"2\" \"aps-account-id\" \"$account\" \"aps-device-token\" \"$token\" \"aps-subtopic\" \"com.apple.mobilemail\" \"mailboxes\" (\"INBOX\" \"Notes\")" \
		>"$dir/out"
	if ! grep -q '^\* XAPPLEPUSHSERVICE aps-version "2" aps-topic "com.apple.mail.XServer.00000000-0000-4000-8000-000000000000"' "$dir/out" ||
		! grep -q '^t0 OK XAPPLEPUSHSERVICE' "$dir/out"; then
		cat "$dir/out" "$dir/dovecot.log" "$log"
		die "registration through the plugin failed"
	fi

	# The admin commands of the guide. In the image /etc/xapsd links to the
	# config volume; here the volume is under the fake root, so name it.
	"$bin" --config "$cfgdir/xapsd.yaml" devices list nobody >"$tmp/list.out" 2>&1 || { cat "$tmp/list.out"; die "devices list failed"; }
	grep -q "^nobody  *$account  *$token  .*INBOX, Notes" "$tmp/list.out" || { cat "$tmp/list.out"; die "device not listed"; }
	"$bin" --config "$cfgdir/xapsd.yaml" test-push nobody >"$tmp/push.out" 2>&1 || { cat "$tmp/push.out"; die "test-push failed"; }
	grep -q "^$account  *$token  *dry-run  *200 " "$tmp/push.out" || { cat "$tmp/push.out"; die "test-push did not push (dry-run)"; }
	if "$bin" --config "$cfgdir/xapsd.yaml" devices list someone-else >"$tmp/none.out" 2>&1; then
		grep -q 'auth_username_format, user_lookup' "$tmp/none.out" || { cat "$tmp/none.out"; die "no hint for an unknown user"; }
	else
		die "devices list of an unknown user failed"
	fi

	# New mail: /notify as the plugin sends it after an LMTP delivery.
	# The answers are read whole before they are checked: "| grep -q" may
	# close the pipe while python still writes, and pipefail then fails a
	# good answer.
	local answer
	answer=$(http POST "http://127.0.0.1:$port/notify" '{"Username":"nobody","Mailbox":"INBOX","Events": ["MessageNew"]}')
	[[ $answer == 200* ]] || die "/notify answered: $answer"
	for _ in $(seq 50); do
		[ "$(grep -c 'dry-run: would push' "$log")" -ge 2 ] && break
		sleep 0.1
	done
	[ "$(grep -c 'dry-run: would push' "$log")" -ge 2 ] || { cat "$log"; die "no push for the new mail"; }
	grep -q 'msg=registered ' "$log" || die "no 'registered' line at debug"
	grep -q 'msg=push .*outcome=dry-run' "$log" || die "no 'push outcome=dry-run' line"

	answer=$(http GET "http://127.0.0.1:$mport/readyz")
	[ "$(head -n1 <<<"$answer")" = "200 ok" ] || { cat "$log"; die "/readyz answered: $answer"; }
	# Every xapsd_ metric the alert rules use is served.
	http GET "http://127.0.0.1:$mport/metrics" >"$tmp/metrics.out"
	local m
	grep -o 'xapsd_[a-z0-9_]*' "$src/configs/prometheus/xapsd.rules.yml" | sort -u >"$tmp/rule-metrics"
	while read -r m; do
		grep -Eq "^$m(_bucket|_sum|_count)?[{ ]" "$tmp/metrics.out" || die "/metrics has no $m (used in xapsd.rules.yml)"
	done <"$tmp/rule-metrics"
	grep -q '^process_start_time_seconds ' "$tmp/metrics.out" || die "/metrics has no process_start_time_seconds"

	# SIGTERM: exit 0, registry on disk and private, socket gone.
	kill -TERM "$pid"
	local rc=0
	wait "$pid" || rc=$?
	rm -f "$tmp/xapsd.pid"
	[ "$rc" = 0 ] || { cat "$log"; die "xapsd exited $rc on SIGTERM"; }
	want_mode "$state/database.json" 600
	grep -q "$token" "$state/database.json" || die "registration not in database.json"
	[ ! -e "$state/xapsd.sock" ] || die "admin socket left behind"
	grep -q 'msg="xapsd stopped"' "$log" || die "no 'xapsd stopped' line"
}

# docker-mailserver 16 (Debian 13, Dovecot 2.4): the Debian 13 root stands in
# for the image. In a throw-away overlay of it the plugin is built as the
# Dockerfile's build stage does, docker-mailserver-install.sh installs into
# the root itself, Dovecot 2.4 accepts the installed snippet, and xapsd,
# started by the start script as supervisord would, runs as the xapsd user
# and takes a registration through the installed plugin.
check_dms16() {
	local base=${XAPS_DEBIAN13_ROOT:-/var/cache/xapsd/debian13-root}
	if [ ! -x "$base/usr/sbin/dovecot" ]; then
		echo "no Debian 13 root with Dovecot 2.4 at $base (test/deps.sh makes it)"
		exit 77
	fi
	local o=$tmp/dms16 m
	mkdir -p "$o/upper" "$o/work" "$o/root"
	m=$o/root
	mount -t overlay overlay -o "lowerdir=$base,upperdir=$o/upper,workdir=$o/work" "$m"
	# shellcheck disable=SC2064 # expand now: the trap runs after the locals are gone
	trap "umount -l '$m'" EXIT
	local p
	for p in README.md Makefile configs scripts dovecot/Makefile dovecot/probe.sh dovecot/probes dovecot/src bin/xapsd; do
		mkdir -p "$(dirname "$m/src/$p")"
		cp -r "$src/$p" "$m/src/$p"
	done
	chroot "$m" env VERSION=test /src/scripts/build.sh --prebuilt-daemon >"$o/build.out" 2>&1 || { cat "$o/build.out"; die "build in the DMS 16 stand-in failed"; }
	chroot "$m" /src/scripts/docker-mailserver-install.sh >"$o/install.out" 2>&1 || { cat "$o/install.out"; die "install failed"; }
	grep -q 'plugin for Dovecot 2\.4' "$o/install.out" || { cat "$o/install.out"; die "not installed for Dovecot 2.4"; }
	want_mode "$m/usr/lib/dovecot/modules/settings/libxaps_settings.so" 644
	want_mode "$m/usr/local/libexec/xapsd/start" 755
	cmp "$src/configs/dovecot/2.4/95-xaps.conf" "$m/etc/dovecot/conf.d/95-xaps.conf"
	grep -q '^xapsd:x:65532:65532:xapsd push daemon:/var/mail-state/lib-xapsd:/usr/sbin/nologin$' "$m/etc/passwd" ||
		die "no xapsd system user with the documented ids (65532) in the image"
	# The image's whole Dovecot configuration with the snippet: the settings
	# module makes the xaps settings known.
	chroot "$m" doveconf -n >"$o/doveconf.out" 2>&1 || { cat "$o/doveconf.out"; die "doveconf rejects the installed snippet"; }
	grep -q '^xaps_url = http://127.0.0.1:11619$' "$o/doveconf.out" || die "doveconf -n shows no xaps_url"

	# The flow: configuration in the config volume, as supervisord starts it.
	local port mport cfg=$m/tmp/docker-mailserver/xapsd state=/var/mail-state/lib-xapsd
	read -r port mport < <(free_ports 2)
	mkdir -p "$cfg"
	printf 'listenAddr: 127.0.0.1\nport: %s\ndatabaseFile: %s/database.json\nmetricsListenAddr: 127.0.0.1:%s\napnsEndpoint: dry-run\nloglevel: debug\n' \
		"$port" "$state" "$mport" >"$cfg/xapsd.yaml"
	echo "not a key" >"$cfg/push.key"
	chmod 0600 "$cfg/push.key" "$cfg/xapsd.yaml"
	local log=$o/xapsd.log pid
	chroot "$m" /usr/local/libexec/xapsd/start /tmp/docker-mailserver/xapsd/xapsd.yaml "$state" >"$log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		http GET "http://127.0.0.1:$mport/healthz" 2>/dev/null | grep -q '^200' && break
		kill -0 "$pid" 2>/dev/null || { cat "$log"; die "xapsd exited at start"; }
		sleep 0.1
	done
	local uid
	uid=$(awk -F: '$1 == "xapsd" { print $3 }' "$m/etc/passwd")
	[ "$(ps -o uid= -p "$pid" | tr -d ' ')" = "$uid" ] || { kill "$pid"; die "xapsd runs as uid $(ps -o uid= -p "$pid"), want the image's xapsd ($uid)"; }
	[ "$(stat -c '%a %u' "$m$state")" = "700 $uid" ] || { kill "$pid"; die "state folder $(stat -c '%a %u' "$m$state")"; }
	[ "$(stat -c '%a %U' "$cfg/push.key")" = "640 root" ] || { kill "$pid"; die "credential file $(stat -c '%a %U' "$cfg/push.key")"; }

	# A registration through the installed Dovecot 2.4 plugin.
	local dir=/tmp/imap24
	mkdir -p "$m$dir/home"
	chown 65534:65534 "$m$dir/home"
	cat >"$m$dir/dovecot.conf" <<EOF
dovecot_config_version = 2.4.1
dovecot_storage_version = 2.4.1
protocols = imap
ssl = no
base_dir = $dir/run
log_path = $dir/dovecot.log
first_valid_uid = 100
first_valid_gid = 100
mail_uid = 65534
mail_gid = 65534
mail_driver = maildir
mail_path = $dir/home/Maildir
# 2.4 passes a standalone imap only the environment named here.
import_environment {
  USER = %{env:USER}
  HOME = %{env:HOME}
}
!include /etc/dovecot/conf.d/95-xaps.conf
xaps_url = http://127.0.0.1:$port
xaps_max_retries = 0
EOF
	local token=2918390218931890821908309283098109381029309829018310983092892829
	local account=0715A26B-CA09-4730-A419-793000CA982E
	IMAP_IN_ROOT=$m imap_session "$dir/dovecot.conf" nobody "$dir/home" \
		"XAPPLEPUSHSERVICE \"aps-version\" \"2\" \"aps-account-id\" \"$account\" \"aps-device-token\" \"$token\" \"aps-subtopic\" \"com.apple.mobilemail\" \"mailboxes\" (\"INBOX\")" \
		>"$o/imap.out" 2>&1
	if ! grep -q '^\* XAPPLEPUSHSERVICE aps-version "2" aps-topic "' "$o/imap.out" || ! grep -q '^t0 OK XAPPLEPUSHSERVICE' "$o/imap.out"; then
		kill "$pid"
		cat "$o/imap.out" "$m$dir/dovecot.log" "$log"
		die "registration through the Dovecot 2.4 plugin failed"
	fi
	chroot "$m" /usr/local/bin/xapsd --config /tmp/docker-mailserver/xapsd/xapsd.yaml devices list nobody >"$o/list.out" 2>&1 ||
		{ kill "$pid"; cat "$o/list.out"; die "devices list failed"; }
	grep -q "$token" "$o/list.out" || { kill "$pid"; cat "$o/list.out"; die "device not listed"; }
	kill -TERM "$pid"
	local rc=0
	wait "$pid" || rc=$?
	[ "$rc" = 0 ] || { cat "$log"; die "xapsd exited $rc on SIGTERM"; }
}

check_dockerfile() {
	python3 - "$src" <<'EOF'
import os, re, shlex, sys
src = sys.argv[1]
lines, cur = [], ""
for raw in open(os.path.join(src, "Dockerfile")):
    s = raw.rstrip("\n")
    if not cur and (s.lstrip().startswith("#") or not s.strip()):
        continue
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    lines.append((cur + s).strip())
    cur = ""
stages, errors = [], []
for l in lines:
    word = l.split()[0].upper()
    if word == "FROM":
        m = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", l, re.I)
        if not m:
            errors.append("bad FROM: " + l); continue
        stages.append(m.group(2))
    for ref in re.findall(r"--from=(\S+?)(?:[,\s]|$)", l) + re.findall(r"from=(\w[\w-]*)", l):
        if ref not in stages[:-1] and ref not in stages:
            errors.append("refers to unknown stage %s: %s" % (ref, l))
    if word == "RUN":
        # Build steps live in scripts CI runs; the Dockerfile only installs
        # packages and calls them.
        cmd = re.sub(r"^RUN\s+(--\S+\s+)*", "", l)
        for part in re.split(r"&&|;", cmd):
            toks = shlex.split(part)
            while toks and "=" in toks[0] and not toks[0].startswith("/"):
                toks = toks[1:]
            if not toks:
                continue
            prog = toks[0]
            if prog in ("apt-get", "rm"):
                continue
            m = re.match(r"^(?:/src/|\./)?(scripts/[\w.-]+\.sh)$", prog)
            if not m:
                errors.append("RUN calls %s; only apt-get and scripts/*.sh: %s" % (prog, l)); continue
            p = os.path.join(src, m.group(1))
            if not os.access(p, os.X_OK):
                errors.append("RUN calls %s, which is not an executable script" % m.group(1))
want = {"build", "xapsd", "mailserver"}
if not want <= set(stages):
    errors.append("stages %s lack %s" % (stages, want - set(stages)))
if stages and stages[-1] != "mailserver":
    errors.append("the last (default) stage is %s, want mailserver" % stages[-1])
ignore = [l.strip() for l in open(os.path.join(src, ".dockerignore")) if l.strip() and not l.startswith("#")]
for needed in ("scripts", "configs", "cmd", "internal", "dovecot", "go.mod", "go.sum"):
    if needed in ignore or needed + "/" in ignore:
        errors.append(".dockerignore excludes %s, which the build needs" % needed)
for junk in (".git", "bin", "dovecot/build"):
    if junk not in ignore and junk + "/" not in ignore and "/" + junk not in ignore:
        errors.append(".dockerignore should exclude %s" % junk)
if errors:
    sys.exit("\n".join(errors))
EOF
}

check_rules_go() {
	cd "$src"
	go test -count=1 ./test/packaging/
}

check_promtool() {
	if ! command -v promtool >/dev/null; then
		echo "promtool not installed (apt-get install prometheus)"
		exit 77
	fi
	cd "$here"
	promtool check rules "$src/configs/prometheus/xapsd.rules.yml"
	promtool test rules xapsd.rules.test.yml
}

export here
run "scripts: header, strict mode, bash -n, shellcheck" check_scripts_lint
run "build.sh --destdir --systemd: files and modes" check_build_destdir
run "installed xapsd: version from ldflags, static, sample config loads" check_installed_binary
run "make run takes CONFIG= and ARGS=" check_make_run
run "make build is scripts/build.sh: a static bin/xapsd" check_make_build_static
run "deb.sh --prebuilt-daemon refuses a dynamically linked xapsd" check_deb_refuses_dynamic_daemon
run "build.sh PREFIX=/usr/local --no-plugin: layout and ExecStart" check_build_prefix_local
run "build.sh keeps edited configuration files (.new beside)" check_config_kept
run "systemd-analyze verify on the installed unit" check_systemd_verify
run "sysusers.d and tmpfiles.d in the DESTDIR root" check_sysusers_tmpfiles
run "doveconf -n accepts the installed 95-xaps.conf" check_doveconf
run "Dovecot imap loads the installed plugin" check_plugin_loads
run "supervisord program parses and fits docker-mailserver" check_supervisord_conf
run "docker-mailserver-install.sh into a fake root, twice" check_dms_install
run "docker-mailserver flow: register via plugin, devices list, test-push, stop" check_dms_flow
run "docker-mailserver 16 (Debian 13 root): build, install, doveconf, flow as the xapsd user" check_dms16
run "Dockerfile uses only existing stages and scripts" check_dockerfile
run "Prometheus rules and Grafana dashboard: structure, metric names, documented metrics" check_rules_go
run "Prometheus rules: promtool check and unit tests" check_promtool

if [ -f "$tmp/xapsd.pid" ]; then
	xapsd_pid=$(cat "$tmp/xapsd.pid")
fi
[ "${#skipped[@]}" = 0 ] || printf 'skipped: %s\n' "${skipped[@]}"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
