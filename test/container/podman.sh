#!/usr/bin/env bash
# podman as the tests run it (as root, with Debian 12's podman, buildah and
# runc, which test/deps.sh installs):
#
#   test/container/podman.sh ARGS...      e.g. test/container/podman.sh images
#
# - the tests' own image store, outside the clone and apart from anything
#   else on the machine: XAPS_PODMAN_ROOT (default /var/cache/xapsd/podman),
#   with its run-time state in /run/xapsd-podman;
# - the vfs storage driver (no overlay mounts needed), runc, and cgroupfs
#   (no systemd session needed);
# - containers.conf beside this script: no default ulimits (setting
#   RLIMIT_NOFILE in a container is refused here) and events in a file
#   rather than the journal.
#
# Containers get no network of their own: the tests run them with
# --network host or in a network namespace of their own with only a
# loopback, never on a bridge.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=$here/containers.conf
exec podman --root "${XAPS_PODMAN_ROOT:-/var/cache/xapsd/podman}" --runroot /run/xapsd-podman \
	--storage-driver vfs --runtime runc --cgroup-manager cgroupfs "$@"
