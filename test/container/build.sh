#!/usr/bin/env bash
# Builds both targets of the repository's Dockerfile with podman, on the
# local stand-ins for its base images (base-images.sh, which this runs
# first):
#
#   test/container/build.sh [NAME]    NAME/mailserver and NAME/xapsd
#                                     (default NAME: localhost/xapsd-test)
#
# The Dockerfile is the one users build with Docker; only --build-arg points
# its base images at the stand-ins. Go modules come from this machine's
# module cache (`go mod download` fills it), mounted into the build as a
# module proxy, so the build downloads no module; the Debian packages the
# Dockerfile installs come from Debian's mirror, as for a user. Nothing is
# pulled from a registry (--pull=never).
#
# Without --layers: with the vfs storage driver every committed step is a
# full copy of the image's files, which made a build three times slower
# (each run builds from a changed tree anyway). buildah 1.28 then removes a
# stage's base image when the stage has no step of its own (the Dockerfile's
# `go` stage, so the Go stand-in); base-images.sh makes it again before the
# next build (about 15 s). Builds on one machine take turns.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
cache=${XAPS_ROOT_CACHE:-/var/cache/xapsd}
name=${1:-localhost/xapsd-test}
modcache=$(go env GOMODCACHE)/cache/download
[ -d "$modcache" ] || { echo "build.sh: no Go module cache at $modcache (go mod download fills it)" >&2; exit 1; }

exec 8>"$cache/.build.lock"
flock 8
"$here/base-images.sh"
args=(
	--pull=never --network host --layers=false
	--volume "$modcache:/goproxy:ro" --build-arg GOPROXY=file:///goproxy
	--build-arg DMS_IMAGE=localhost/xapsd-ci/dms-standin --build-arg DMS_TAG=16
	--build-arg GO_IMAGE=localhost/xapsd-ci/golang:1.26-bookworm
	--build-arg RUNTIME_IMAGE=localhost/xapsd-ci/distroless-static:nonroot
	--build-arg VERSION="$(git -C "$src" describe --always --dirty 2>/dev/null || echo dev)"
)
# The xapsd target first: the mailserver build is the one that removes the
# Go stand-in.
for target in xapsd mailserver; do
	start=$(date +%s)
	old=$("$here/podman.sh" image inspect --format '{{.Id}}' "$name/$target" 2>/dev/null || true)
	"$here/podman.sh" build "${args[@]}" --target "$target" --tag "$name/$target" "$src"
	# The image this one replaces would stay behind untagged.
	if [ -n "$old" ] && [ "$old" != "$("$here/podman.sh" image inspect --format '{{.Id}}' "$name/$target")" ]; then
		"$here/podman.sh" rmi "$old" >/dev/null 2>&1 || true
	fi
	echo "build.sh: $name/$target built in $(($(date +%s) - start)) s"
done
