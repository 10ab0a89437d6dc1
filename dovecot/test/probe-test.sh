#!/usr/bin/env bash
# The build's API probes (dovecot/probe.sh) against headers changed the way a
# future Dovecot might change them: a copy of this machine's dovecot-dev
# headers, edited, and a dovecot-config that points at the copy.
#
#   dovecot/test/probe-test.sh
#
# - unchanged headers build (the baseline of the cases below);
# - a signature the plugin probes for, changed so that no known alternative
#   fits (imap_append_string with a new argument), stops `make` with a
#   message naming the probe and its log, and compiles nothing;
# - a field that changed its type (struct http_url's enc_path as an int) is
#   not taken for a missing one: the probe fails instead of choosing the
#   "absent" alternative;
# - nor is a function with a signature no alternative knows
#   (http_client_settings_init with another argument list).
# Needs dovecot-dev, make and a C compiler; no root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
config=${DOVECOT_CONFIG:-/usr/lib/dovecot/dovecot-config}
[ -r "$config" ] || { echo "probe-test.sh: no $config (install dovecot-dev)" >&2; exit 2; }
# shellcheck source=/dev/null disable=SC2154
incdir=$(. "$config" && printf '%s' "$LIBDOVECOT_INCLUDE" | sed -n 's/^ *-I\([^ ]*\).*/\1/p')
[ -d "$incdir" ] || { echo "probe-test.sh: no Dovecot headers at '$incdir'" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
check() {
	if [ "$1" = 0 ]; then
		echo "ok   $2"
	else
		echo "FAIL $2${3:+: $3}"
		failures=$((failures + 1))
	fi
}

# case NAME: a fresh copy of the sources and of the headers in $tmp/NAME;
# edit $tmp/NAME/inc, then build NAME.
case_dir() {
	local d=$tmp/$1
	mkdir -p "$d/src"
	cp -r "$src/Makefile" "$src/probe.sh" "$src/probes" "$src/src" "$d/src/"
	cp -r "$incdir" "$d/inc"
	sed "s|-I$incdir|-I$d/inc|g" "$config" >"$d/dovecot-config"
}
build() {
	make -C "$tmp/$1/src" DOVECOT_CONFIG="$tmp/$1/dovecot-config" >"$tmp/$1/out" 2>&1
}

case_dir baseline
rc=0; build baseline || rc=$?
check "$rc" "unchanged headers: the plugin builds" "$(tail -n 5 "$tmp/baseline/out")"

case_dir quote
sed -i 's/^void imap_append_string(string_t \*dest, const char \*src[^;]*;/void imap_append_string(string_t *dest, const char *src, int flags, int more);/' "$tmp/quote/inc/imap-quote.h"
grep -q 'int flags, int more' "$tmp/quote/inc/imap-quote.h" || { echo "probe-test.sh: could not edit imap-quote.h" >&2; exit 2; }
rc=0; build quote || rc=$?
out=$(cat "$tmp/quote/out")
ok=0
{ [ "$rc" != 0 ] && [[ $out == *"probe 'imap_quote' (dovecot/probes/imap_quote.c) failed"* ]] &&
	[[ $out == *"build/probes.log"* ]] && ! ls "$tmp/quote/src/build/"*.o >/dev/null 2>&1; } || ok=1
check "$ok" "a changed imap_append_string() stops the build naming the probe and its log" "$out"

case_dir enc_path
if grep -q 'const char \*enc_path;' "$tmp/enc_path/inc/http-url.h"; then
	sed -i 's/const char \*enc_path;/int enc_path;/' "$tmp/enc_path/inc/http-url.h"
else
	sed -i 's/^\(\tconst char \*path;\)/\tint enc_path;\n\1/' "$tmp/enc_path/inc/http-url.h"
fi
grep -q 'int enc_path;' "$tmp/enc_path/inc/http-url.h" || { echo "probe-test.sh: could not edit http-url.h" >&2; exit 2; }
rc=0; build enc_path || rc=$?
out=$(cat "$tmp/enc_path/out")
ok=0
{ [ "$rc" != 0 ] && [[ $out == *"probe 'url_enc_path'"* ]]; } || ok=1
check "$ok" "a field of another type is not taken for a missing one (url_enc_path fails)" "$out"

case_dir settings_init
if grep -q 'http_client_settings_init' "$tmp/settings_init/inc/http-client.h"; then
	sed -i 's/^void http_client_settings_init(.*$/void http_client_settings_init(pool_t pool, struct http_client_settings *set, int more);/' "$tmp/settings_init/inc/http-client.h"
else
	printf '%s\n' '#ifndef XAPS_PROBE_TEST' '#define XAPS_PROBE_TEST' \
		'void http_client_settings_init(struct http_client_settings *set, int more);' '#endif' \
		>>"$tmp/settings_init/inc/http-client.h"
fi
rc=0; build settings_init || rc=$?
out=$(cat "$tmp/settings_init/out")
ok=0
{ [ "$rc" != 0 ] && [[ $out == *"probe 'http_settings_init'"* ]]; } || ok=1
check "$ok" "a function with an unknown signature is not taken for a missing one" "$out"

if [ "$failures" != 0 ]; then
	echo "$failures probe check(s) failed"
	exit 1
fi
echo "all probe checks passed"
