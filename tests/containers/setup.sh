#!/usr/bin/env bash
# Make podman usable for the container tests (tests/services/test_docker_runtime.py): podman serves
# the Docker Engine API that physarum's docker runtime speaks.
#
#   bash tests/containers/setup.sh        # idempotent, non-interactive, quiet when up to date
#
# 1. apt-get installs podman, runc and busybox-static, only when one is missing (root, or sudo).
# 2. Writes tests/containers/conf/containers.conf (gitignored), the file CONTAINERS_CONF names for
#    every podman the tests run: cgroupfs and runc, and explicit ulimits, because this sandbox drops
#    CAP_SYS_RESOURCE and runs cgroups in hybrid mode, so podman's defaults cannot start a container.
# 3. Builds the test image localhost/physarum-test-busybox:1 when `podman image exists` says it is
#    missing: `podman import` of a tarball holding Debian's static busybox (the only binary: the
#    image has no shell) and /www/index.html ("Hello, world"). Nothing is pulled from a registry.
#    Change the image's contents => bump its tag here and in tests/containers/conftest.py.
#
# Fast path (everything present): ~0.1 s, one `podman image exists`.
# When podman cannot be installed (apt unreachable), it writes the reason to
# tests/containers/conf/unavailable, warns on stderr and exits 0: the container tests then skip
# with that reason instead of the whole test run failing. Any other failure exits non-zero.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF_DIR="$HERE/conf"
CONF="$CONF_DIR/containers.conf"
UNAVAILABLE="$CONF_DIR/unavailable"
IMAGE="localhost/physarum-test-busybox:1"

fail() { echo "tests/containers/setup.sh: $*" >&2; exit 1; }

mkdir -p "$CONF_DIR"

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

missing=()
for pkg in podman runc catatonit busybox-static; do
  installed "$pkg" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  source "$HERE/../../scripts/apt-install.sh"
  # No recommends: podman's (buildah, slirp4netns, fuse-overlayfs, ...) are for rootless and
  # bridge networks; the tests run rootful containers on the host's network.
  if ! apt_install tests/containers/setup.sh "${missing[@]}"; then
    echo "$APT_ERROR" >"$UNAVAILABLE"
    echo "tests/containers/setup.sh: WARNING: $APT_ERROR; the container tests will skip" >&2
    exit 0
  fi
fi
rm -f "$UNAVAILABLE"

want_conf='# Written by tests/containers/setup.sh: podman for the container tests (CONTAINERS_CONF).
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
'
if [ "$(cat "$CONF" 2>/dev/null || true)" != "$(printf '%s' "$want_conf")" ]; then
  printf '%s' "$want_conf" >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
fi
export CONTAINERS_CONF="$CONF"

if podman image exists "$IMAGE"; then
  exit 0
fi

# Serialise concurrent first runs on a lock outside the source tree.
exec 9>"${TMPDIR:-/tmp}/physarum-containers-image.lock"
flock -w 120 9 || fail "timed out waiting for the image lock"
podman image exists "$IMAGE" && exit 0

start=$SECONDS
[ -x /bin/busybox ] || fail "/bin/busybox is missing although busybox-static is installed"
work="$(mktemp -d "${TMPDIR:-/tmp}/physarum-busybox-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin" "$work/root/www" "$work/root/tmp"
cp /bin/busybox "$work/root/bin/busybox"
printf 'Hello, world\n' >"$work/root/www/index.html"
tar --owner=0 --group=0 -C "$work/root" -cf "$work/rootfs.tar" .
podman import --quiet "$work/rootfs.tar" "$IMAGE" >/dev/null || fail "podman import of the busybox image failed"
echo "test image $IMAGE built in $((SECONDS - start)) s"
