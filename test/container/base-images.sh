#!/usr/bin/env bash
# The base images the container tests build the Dockerfile on. No registry
# is reachable from CI, so each is made on this machine from a Debian root,
# `tar -C ROOT -c . | podman import - NAME`, into the tests' image store
# (test/container/podman.sh):
#
#   test/container/base-images.sh          make what is missing or out of date (as root)
#   test/container/base-images.sh --check  only say what is missing; exit 1 if anything is
#
#   localhost/xapsd-ci/dms-standin:16      DMS_IMAGE:DMS_TAG, a docker-mailserver 16
#       stand-in made only of Debian 13 packages, with docker-mailserver's
#       layout: dumb-init and supervisord as the main process, loading
#       /etc/supervisor/conf.d/*.conf; Dovecot 2.4 and Postfix delivering
#       over LMTP, started by start-mailserver.sh from the accounts in the
#       config volume /tmp/docker-mailserver; state in /var/mail-state.
#       Its root is /var/cache/xapsd/dms16-standin (test/debian-root.sh)
#       with the files of dms-standin/ beside this script.
#   localhost/xapsd-ci/golang:1.26-bookworm   GO_IMAGE: the clean Debian 12
#       root test/deps.sh makes (/var/cache/xapsd/debian12-clean) with this
#       machine's Go toolchain in /usr/local/go, as in Docker's golang image.
#       It holds no modules: the tests hand the build the host's module
#       cache as a module proxy (GOPROXY=file://…).
#   localhost/xapsd-ci/distroless-static:nonroot   RUNTIME_IMAGE: distroless's
#       layout (no shell, no package manager): passwd and group with root,
#       nobody and nonroot (65532), /home/nonroot, /tmp, the CA certificates
#       and time zones of the stand-in's Debian 13 root.
#
# Each image carries a label with a checksum of what it was made from (the
# root's packages, the stand-in's files, this script, the Go version); an
# image whose label no longer matches is made again. The roots and the image
# store stay outside the clone and are reused by every run.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
cache=${XAPS_ROOT_CACHE:-/var/cache/xapsd}
podman=$here/podman.sh
self=$here/base-images.sh
check_only=0
[ "${1:-}" = --check ] && check_only=1

dms_image=localhost/xapsd-ci/dms-standin:16
go_image=localhost/xapsd-ci/golang:1.26-bookworm
runtime_image=localhost/xapsd-ci/distroless-static:nonroot
dms_root=$cache/dms16-standin
dms_packages=(supervisor dumb-init dovecot-core dovecot-imapd dovecot-lmtpd postfix ca-certificates curl)
go_root=$cache/debian12-clean
label=xapsd.ci.source

say() { printf 'base-images.sh: %s\n' "$*" >&2; }

# sum FILE... prints one checksum of the files' contents and names.
sum() { sha256sum "$@" | sha256sum | cut -c1-16; }

# current IMAGE prints the checksum label of IMAGE, or nothing.
current() {
	"$podman" image inspect --format "{{index .Labels \"$label\"}}" "$1" 2>/dev/null || true
}

if [ "$(id -u)" != 0 ] || ! command -v podman >/dev/null; then
	say "needs root and podman (test/deps.sh installs podman, buildah and runc)"
	exit 1
fi

# One run at a time: the roots are completed and the images replaced here.
exec 9>"$cache/.base-images.lock"
flock 9

standin_sum() {
	# The stand-in's files are copied into its root (below), so the sum
	# covers them through the repository, plus the root's packages.
	local files
	mapfile -t files < <(cd "$here" && find dms-standin -type f | sort)
	(cd "$here" && sum "$self" "${files[@]}" "$dms_root/var/lib/dpkg/status")
}
go_sum() {
	{ go env GOROOT GOVERSION; sha256sum "$go_root/var/lib/dpkg/status" "$self"; } | sha256sum | cut -c1-16
}
runtime_sum() {
	sum "$self" "$dms_root/var/lib/dpkg/status"
}

missing=()
[ -x "$dms_root/usr/bin/supervisord" ] && [ -x "$dms_root/usr/bin/curl" ] || missing+=("root $dms_root")
if [ -d "$dms_root" ]; then
	[ "$(current "$dms_image")" = "$(standin_sum)" ] || missing+=("$dms_image")
	[ "$(current "$runtime_image")" = "$(runtime_sum)" ] || missing+=("$runtime_image")
else
	missing+=("$dms_image" "$runtime_image")
fi
if [ ! -x "$go_root/bin/bash" ]; then
	say "no Debian 12 root at $go_root (test/deps.sh makes it)"
	exit 1
fi
[ "$(current "$go_image")" = "$(go_sum)" ] || missing+=("$go_image")
[ ${#missing[@]} -gt 0 ] || exit 0
if [ "$check_only" = 1 ]; then
	say "missing or out of date: ${missing[*]}"
	exit 1
fi

# import ROOT NAME SUM [--change …]: ROOT, less apt's downloaded lists and
# packages, becomes the image NAME labelled with SUM.
import() {
	local root=$1 name=$2 checksum=$3 old
	shift 3
	old=$("$podman" image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
	tar -C "$root" -c --numeric-owner --exclude='./var/lib/apt/lists/*' --exclude='./var/cache/apt/*' . |
		"$podman" import --quiet --change "LABEL $label=$checksum" "$@" - "$name" >/dev/null
	# The replaced image, unless something still uses it.
	[ -z "$old" ] || "$podman" rmi "$old" >/dev/null 2>&1 || true
	say "made $name"
}

# --- The docker-mailserver 16 stand-in ---------------------------------------
"$src/test/debian-root.sh" trixie "$dms_root" "${dms_packages[@]}"
# Debian's Dovecot configuration is replaced by the stand-in's, as
# docker-mailserver replaces it with its own.
find "$dms_root/etc/dovecot/conf.d" -maxdepth 1 -name '*.conf' ! -name 10-standin.conf -delete
tar -C "$here/dms-standin" -c --owner=0 --group=0 . | tar -C "$dms_root" -x --no-overwrite-dir
# docker-mailserver's mail user.
if ! grep -q '^docker:' "$dms_root/etc/passwd"; then
	chroot "$dms_root" groupadd --gid 5000 docker
	chroot "$dms_root" useradd --uid 5000 --gid 5000 --no-create-home --home-dir /var/mail \
		--shell /usr/sbin/nologin docker
fi
checksum=$(standin_sum)
if [ "$(current "$dms_image")" != "$checksum" ]; then
	import "$dms_root" "$dms_image" "$checksum" \
		--change 'ENTRYPOINT ["/usr/bin/dumb-init", "--"]' \
		--change 'CMD ["supervisord", "-c", "/etc/supervisor/supervisord.conf"]' \
		--change 'EXPOSE 25' --change 'EXPOSE 143' \
		--change 'VOLUME ["/var/mail", "/var/mail-state", "/var/log/mail", "/tmp/docker-mailserver"]'
fi

# --- The Go toolchain --------------------------------------------------------
checksum=$(go_sum)
if [ "$(current "$go_image")" != "$checksum" ]; then
	goroot=$(go env GOROOT)
	base=$(basename "$goroot")
	old=$("$podman" image inspect --format '{{.Id}}' "$go_image" 2>/dev/null || true)
	# One archive: the root, then GOROOT renamed to usr/local/go.
	tar -c --numeric-owner -C "$go_root" --exclude='./var/lib/apt/lists/*' --exclude='./var/cache/apt/*' . \
		-C "$(dirname "$goroot")" --transform "s,^${base//./\\.}\(/\|\$\),usr/local/go\1,S" "$base" |
		"$podman" import --quiet --change "LABEL $label=$checksum" \
			--change 'ENV PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			--change 'ENV GOPATH=/go' --change 'ENV GOTOOLCHAIN=local' \
			--change 'WORKDIR /go' - "$go_image" >/dev/null
	[ -z "$old" ] || "$podman" rmi "$old" >/dev/null 2>&1 || true
	say "made $go_image ($(go env GOVERSION))"
fi

# --- The distroless runtime --------------------------------------------------
checksum=$(runtime_sum)
if [ "$(current "$runtime_image")" != "$checksum" ]; then
	stage=$(mktemp -d)
	trap 'rm -rf "$stage"' EXIT
	chmod 0755 "$stage"
	install -d -m 0755 "$stage/etc/ssl/certs" "$stage/usr/share" "$stage/usr/lib" "$stage/root" "$stage/var"
	install -d -m 1777 "$stage/tmp"
	install -d -m 0700 -o 65532 -g 65532 "$stage/home/nonroot"
	cp "$dms_root/etc/ssl/certs/ca-certificates.crt" "$stage/etc/ssl/certs/"
	cp -a "$dms_root/usr/share/zoneinfo" "$stage/usr/share/"
	cp "$dms_root/usr/lib/os-release" "$stage/usr/lib/"
	ln -s ../usr/lib/os-release "$stage/etc/os-release"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$stage/etc/passwd"
	printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$stage/etc/group"
	printf 'hosts: files dns\n' >"$stage/etc/nsswitch.conf"
	import "$stage" "$runtime_image" "$checksum" \
		--change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'
fi
