#!/usr/bin/env bash
# Builds the Debian package xapsd_<version>_<arch>.deb for the Debian release
# this runs on and its Dovecot (12: 2.3.19, 12 with bookworm-backports:
# 2.3.21, 13: 2.4.1, 14 "forky": 2.4.5), with dpkg-deb. `make deb` runs it
# here and, with scripts/deb-in-root.sh, in each root of test/dovecot-roots.
# The version ends in ~deb<release>, or ~bpo<release> when Dovecot comes
# from the release's backports.
#
# Usage: scripts/deb.sh [--out DIR] [--prebuilt-daemon]
#
#   --out DIR          where the .deb goes (default: the repository's dist/)
#   --prebuilt-daemon  package the bin/xapsd built before instead of building
#                      it (inside a Debian root without Go; the binary is
#                      static, so one build serves every release)
#
# Needs dovecot-dev of the Dovecot the package is for, gcc, make and dpkg-dev.
# The package holds what scripts/build.sh --install --systemd installs, with
# the Dovecot snippet as /usr/share/xapsd/dovecot/95-xaps.conf (the admin
# enables it with a symlink in /etc/dovecot/conf.d, so that a package for the
# next Debian release brings the snippet for its Dovecot along):
#
#   /usr/bin/xapsd, /etc/xapsd/xapsd.yaml (conffile), the plugins and (2.4)
#   the settings module in Dovecot's module folder, the systemd unit,
#   sysusers.d and tmpfiles.d entries, /usr/share/doc/xapsd/.
#
# It depends on the Dovecot it was built against: Dovecot refuses plugins
# built for another version (the ABI and, on 2.3, the upstream version), so
# dovecot-core's upstream version is pinned and its ABI required; Debian's
# own revisions and security updates of that version keep the package
# installable.
#
# Environment: VERSION (default: from git describe), SOURCE_DATE_EPOCH (the
# date in the package version and changelog when there is no git; default
# the last commit's, else now), MAKE, GO.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
out=$src/dist
daemon_opt=
while [ $# -gt 0 ]; do
	case $1 in
	--out) [ $# -ge 2 ] || { echo "deb.sh: --out needs a folder" >&2; exit 2; }
		out=$2; shift ;;
	--prebuilt-daemon) daemon_opt=--prebuilt-daemon ;;
	-h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) echo "deb.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done

say() { printf 'deb.sh: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

for tool in dpkg-deb dpkg-query dpkg-architecture; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install dpkg-dev)"
done
# (Not sourced: /etc/os-release sets VERSION too.)
os_id=$(sed -n 's/^ID=//p' /etc/os-release | tr -d '"')
[ "$os_id" = debian ] || die "this is not Debian; the package is built on the Debian release it is for"
release=$(sed -n 's/^VERSION_ID=//p' /etc/os-release | tr -d '"')
release=${release%%.*}
if [ -z "$release" ]; then
	# Testing and unstable have no number yet; the next stable's is known.
	codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release | tr -d '"')
	case $codename in
	forky) release=14 ;;
	duke) release=15 ;;
	*) die "Debian '$codename' has no release number here; add it to scripts/deb.sh" ;;
	esac
fi
dovecot_deb=$(dpkg-query -W -f='${Version}' dovecot-dev 2>/dev/null) || die "dovecot-dev is not installed"
# Dovecot from the release's backports (1:2.3.21.1+dfsg1-1~bpo12+1).
tag=deb
case $dovecot_deb in *~bpo*) tag=bpo ;; esac
arch=$(dpkg-architecture -qDEB_HOST_ARCH)

# Upstream part of dovecot-dev's version (1:2.4.1+dfsg1-6 -> 1:2.4.1) and
# the next upstream version, as the upper bound (1:2.4.2~).
epoch=
case $dovecot_deb in *:*) epoch=${dovecot_deb%%:*}: ;; esac
upstream=${dovecot_deb#*:}
upstream=${upstream%%[+-]*}
next=$(echo "$upstream" | awk -F. '{ $NF = $NF + 1; print }' OFS=.)
abi=$(dpkg-query -W -f='${Provides}' dovecot-core 2>/dev/null | tr ',' '\n' | sed -n 's/^ *\(dovecot-abi-[^ ]*\).*/\1/p' | head -n 1)
[ -n "$abi" ] || die "dovecot-core does not say its ABI (Provides: dovecot-abi-...)"

stamp=${SOURCE_DATE_EPOCH:-$(git -C "$src" log -1 --format=%ct 2>/dev/null || date -u +%s)}
# A version Debian sorts: a tag v1.2.3 gives 1.2.3, else 0~git<date>.<commit>.
if [ -z "${VERSION:-}" ]; then
	VERSION=$(git -C "$src" describe --always --dirty 2>/dev/null || echo dev)
fi
if [[ $VERSION =~ ^v?([0-9][0-9A-Za-z.+~]*)$ ]]; then
	upversion=${BASH_REMATCH[1]}
else
	date=$(date -u -d "@$stamp" +%Y%m%d)
	upversion=0~git$date.$(echo "$VERSION" | tr -c 'A-Za-z0-9.+~\n' '.')
fi
debversion=$upversion-1~$tag$release
pkgname=xapsd_${debversion}_$arch.deb

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps wants the layout of a source package.
mkdir -p "$work/debian"
echo "Source: xapsd" >"$work/debian/control"
pkg=$work/debian/xapsd
say "building $pkgname for Debian $release, Dovecot $dovecot_deb ($abi)"
VERSION=$VERSION "$src/scripts/build.sh" --destdir "$pkg" --systemd $daemon_opt >"$work/build.log" 2>&1 ||
	{ cat "$work/build.log" >&2; die "scripts/build.sh failed"; }

# The snippet is not enabled by installing the package (see above).
install -d -m 0755 "$pkg/usr/share/xapsd/dovecot"
mv "$pkg/etc/dovecot/conf.d/95-xaps.conf" "$pkg/usr/share/xapsd/dovecot/95-xaps.conf"
rm -rf "$pkg/etc/dovecot"
# The state folder is made by postinst, owned by the xapsd user.
rm -rf "${pkg:?}/var"

# Debian ships stripped objects (symbols would go into a -dbgsym package).
plugins=$(find "$pkg/usr/lib/dovecot/modules" -name '*.so')
# shellcheck disable=SC2086 # a list of paths without blanks
strip --strip-unneeded --remove-section=.comment --remove-section=.note $plugins
strip --strip-unneeded --remove-section=.comment "$pkg/usr/bin/xapsd"
# The plugins' libc needs; xapsd itself is static.
# shellcheck disable=SC2046,SC2086 # a list of paths without blanks
libc=$(cd "$work" && dpkg-shlibdeps -O $(printf -- '-e %s ' $plugins) 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$libc" ] || die "dpkg-shlibdeps found no dependencies of the plugins"

doc=$pkg/usr/share/doc/xapsd
install -d -m 0755 "$doc"
cat >"$doc/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: xapsd
Source: https://github.com/xapsd/xapsd

Files: *
Copyright: the xapsd authors
License: other
 No license has been chosen for xapsd yet; see the repository.
EOF
changes=$(git -C "$src" log -1 --format=%s 2>/dev/null | cut -c1-70 || true)
changes=${changes:-Package built from a source tree.}
{
	echo "xapsd ($debversion) unstable; urgency=medium"
	echo
	echo "  * $changes"
	echo
	echo " -- xapsd maintainers <maintainers@users.noreply.github.com>  $(date -u -R -d "@$stamp")"
} | gzip -9n >"$doc/changelog.Debian.gz"
cp "$src/README.md" "$doc/README.md"
gzip -9n "$doc/README.md"
# xapsd is a static Go program on purpose: the same binary runs in every
# image and release (it needs no libc at all). The override below says so,
# and Depends has no libc for it: refuse a binary that is not (one built
# with CGO_ENABLED=1, say, and packaged with --prebuilt-daemon).
elf=$(readelf -lW -d "$pkg/usr/bin/xapsd") || die "usr/bin/xapsd is not an ELF program"
if grep -q -e 'program interpreter' -e '(NEEDED)' <<<"$elf"; then
	die "bin/xapsd is dynamically linked, but the package says it is static: build it with make build (scripts/build.sh, CGO_ENABLED=0)"
fi
install -d -m 0755 "$pkg/usr/share/lintian/overrides"
echo "xapsd: statically-linked-binary [usr/bin/xapsd]" >"$pkg/usr/share/lintian/overrides/xapsd"

find "$pkg" -type d -exec chmod 0755 {} +
install -d -m 0755 "$pkg/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<EOF
Package: xapsd
Version: $debversion
Architecture: $arch
Maintainer: xapsd maintainers <maintainers@users.noreply.github.com>
Installed-Size: $installed_size
Depends: dovecot-core (>= ${epoch}${upstream}), dovecot-core (<< ${epoch}${next}~), $abi, adduser, $libc
Recommends: dovecot-imapd, dovecot-lmtpd
Section: mail
Priority: optional
Homepage: https://github.com/xapsd/xapsd
Description: push e-mail for iOS Mail on Dovecot
 xapsd and its Dovecot plugin give iPhones and iPads real push for IMAP
 accounts on this server: the plugin adds Apple's XAPPLEPUSHSERVICE IMAP
 extension and tells the daemon about mailbox changes; the daemon keeps the
 registered devices and asks Apple's push service to wake them.
 .
 Built for Dovecot $upstream. Enable the plugin by linking
 /usr/share/xapsd/dovecot/95-xaps.conf into /etc/dovecot/conf.d/.
EOF
echo /etc/xapsd/xapsd.yaml >"$pkg/DEBIAN/conffiles"

cat >"$pkg/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# xapsd runs as its own unprivileged user; its state folder is private, its
# configuration folder readable by it (it holds keys).
set -e
if [ "$1" = configure ]; then
	if ! getent passwd xapsd >/dev/null; then
		adduser --system --group --home /var/lib/xapsd --no-create-home \
			--gecos "xapsd push daemon" --shell /usr/sbin/nologin xapsd >/dev/null
	fi
	install -d -m 0700 -o xapsd -g xapsd /var/lib/xapsd
	chown root:xapsd /etc/xapsd
	chmod 0750 /etc/xapsd
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null || true
	fi
fi
exit 0
EOF
cat >"$pkg/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	systemctl stop xapsd.service >/dev/null 2>&1 || true
fi
exit 0
EOF
cat >"$pkg/DEBIAN/postrm" <<'EOF'
#!/bin/sh
# remove keeps the registry and the configuration. purge removes what the
# package and its daemon made: the registry (snapshot, journal, lock,
# damaged copies), the admin socket, the pending pushes, the sample
# configuration (dpkg, a conffile), the folders once empty, and the xapsd
# user. It keeps what the admin brought or what cannot be made again: the
# credentials put into /etc/xapsd, the Apple push certificates imported
# into /var/lib/xapsd/apple-push, the old daemon's database backups (they
# may hold those certificates' keys), anything else found there, and then
# the xapsd user and group that own them; it says what it kept.
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
	state=/var/lib/xapsd
	if [ -d "$state" ]; then
		rm -f "$state/database.json" "$state/database.json.lock" "$state"/database.json.journal.* \
			"$state"/.database.json.tmp-* "$state"/database.json.damaged-* \
			"$state/xapsd.sock" "$state/pending-pushes.json"
		rmdir "$state" 2>/dev/null || true
	fi
	rmdir /etc/xapsd 2>/dev/null || true
	kept=""
	for d in /etc/xapsd "$state"; do
		if [ -d "$d" ]; then
			kept="$kept $d"
		fi
	done
	if [ -n "$kept" ]; then
		echo "xapsd: purge kept what the package did not make (credentials, Apple push certificates, backups):" >&2
		for d in $kept; do
			echo "  $d: $(find "$d" -mindepth 1 -maxdepth 1 -printf '%f ')" >&2
		done
		echo "xapsd: and the xapsd user and group, which own them; once you no longer need these files, remove them and run: deluser --system xapsd" >&2
	else
		if getent passwd xapsd >/dev/null; then
			deluser --system --quiet xapsd >/dev/null 2>&1 || true
		fi
		if getent group xapsd >/dev/null; then
			delgroup --system --quiet xapsd >/dev/null 2>&1 || true
		fi
	fi
fi
exit 0
EOF
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"

mkdir -p "$out"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$out/$pkgname" >/dev/null
say "wrote $out/$pkgname"
