#!/usr/bin/env bash
# What the container-image and Kubernetes tests need (tests/deploy), after tests/containers/setup.sh:
#
#   bash tests/containers/image-setup.sh     # idempotent, non-interactive, quiet when up to date
#
# 1. The wheelhouse of physarum's dependencies (tests/containers/conf/wheels, gitignored), made with
#    `pip download --only-binary=:all:` on the host: pip inside a container cannot verify this
#    machine's TLS interception, so the image installs offline from wheels. Remade when the dependency
#    list in pyproject.toml changes. The test builds physarum's own wheel from the checkout, offline,
#    with the setuptools and wheel downloaded into wheels/build.
# 2. A kustomize renderer (tests/deploy/kustomize/bin/kustomize, gitignored), built from tests/deploy/kustomize
#    (its own go.mod/go.sum, Go module proxy) when its sources change, so the Kubernetes test renders
#    deploy/k8s the same way on every machine whether or not kubectl is installed.
# 3. The base image localhost/physarum-base:bookworm, when `podman image exists` says it is missing:
#    Debian's `debootstrap --variant=minbase --include=python3,python3-venv bookworm` (about 40 s,
#    from the apt mirror this machine uses), a tar of that tree, `podman import`. Nothing is pulled
#    from a container registry (none can be reached here). Change what goes in => bump BASE_IMAGE here
#    and in tests/deploy/test_image.py.
#
# Skips step 3 when podman is unavailable (setup.sh left conf/unavailable): the image test then skips
# with that reason. Where debootstrap cannot be installed or fails, it writes the reason to
# conf/image-unavailable and exits 0, and the image test skips with it. Any other failure exits
# non-zero. Heavy steps run under nice: the machines are shared.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CONF_DIR="$HERE/conf"
CONF="$CONF_DIR/containers.conf"
IMAGE_UNAVAILABLE="$CONF_DIR/image-unavailable"
BASE_IMAGE="localhost/physarum-base:bookworm"
SUITE="bookworm"
WHEELS="$CONF_DIR/wheels"
PY="$ROOT/.venv/bin/python"

fail() { echo "tests/containers/image-setup.sh: $*" >&2; exit 1; }
unavailable() {
  echo "$*" >"$IMAGE_UNAVAILABLE"
  echo "tests/containers/image-setup.sh: WARNING: $*; the container image test will skip" >&2
}

mkdir -p "$CONF_DIR"

# -- 1. the dependency wheelhouse --------------------------------------------------------------
[ -x "$PY" ] || fail "$PY is missing: run scripts/test.sh (it makes .venv first)"
deps="$("$PY" -c '
import tomllib, sys
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))' "$ROOT/pyproject.toml")"
deps_hash="$(printf '%s\nbuild: setuptools>=64 wheel\n' "$deps" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$WHEELS/.deps-hash" 2>/dev/null || true)" != "$deps_hash" ]; then
  rm -rf "$WHEELS.tmp"
  mkdir -p "$WHEELS.tmp"
  printf '%s\n' "$deps" >"$WHEELS.tmp/requirements.txt"
  # The image's Python is Debian bookworm's 3.11: ask for wheels of that version, whatever the host's.
  # pip does not widen a --platform to older manylinux levels: name every level bookworm's glibc
  # (2.36) runs.
  arch="$(uname -m)"
  platforms=(--platform "manylinux2014_$arch")
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
  nice "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none "${platforms[@]}" \
    -d "$WHEELS.tmp" -r "$WHEELS.tmp/requirements.txt" \
    || fail "pip download of physarum's dependencies failed"
  # What pip needs to build physarum's own wheel offline (its build isolation), kept apart from the
  # image's wheels: the test runs `pip wheel --no-index --find-links wheels/build`.
  nice "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    -d "$WHEELS.tmp/build" "setuptools>=64" wheel \
    || fail "pip download of setuptools and wheel failed"
  echo "$deps_hash" >"$WHEELS.tmp/.deps-hash"
  rm -rf "$WHEELS"
  mv "$WHEELS.tmp" "$WHEELS"
fi

# -- 2. the kustomize renderer -----------------------------------------------------------------
bash "$ROOT/tests/deploy/kustomize/setup.sh"

# -- 3. the base image -------------------------------------------------------------------------
if [ -e "$CONF_DIR/unavailable" ] || ! command -v podman >/dev/null 2>&1 || [ ! -e "$CONF" ]; then
  exit 0  # setup.sh said why podman cannot be had; the image test skips with that reason
fi
export CONTAINERS_CONF="$CONF"
if podman image exists "$BASE_IMAGE"; then
  rm -f "$IMAGE_UNAVAILABLE"
  exit 0
fi

exec 9>"${TMPDIR:-/tmp}/physarum-base-image.lock"
flock -w 600 9 || fail "timed out waiting for the base image lock"
if podman image exists "$BASE_IMAGE"; then
  rm -f "$IMAGE_UNAVAILABLE"
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  source "$ROOT/scripts/apt-install.sh"
  if ! apt_install tests/containers/image-setup.sh debootstrap; then
    unavailable "$APT_ERROR"
    exit 0
  fi
fi
[ "$(id -u)" -eq 0 ] || fail "debootstrap needs root"

# The mirror this machine's apt already uses (a local mirror or a snapshot stays in use).
mirror="$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* \
  2>/dev/null | grep -oE 'https?://[^ ]+' | head -n 1 || true)"
mirror="${mirror:-http://deb.debian.org/debian}"

start=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/physarum-base-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log="$work/debootstrap.log"
if ! nice debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$work/root" "$mirror" \
     >"$log" 2>&1 </dev/null; then
  unavailable "debootstrap $SUITE from $mirror failed: $(grep -E '^(E|W):' "$log" | tail -n 2 | tr '\n' ' ')"
  exit 0
fi
# The image needs no apt lists or caches: they only add size.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
nice tar --numeric-owner -C "$work/root" -cf "$work/rootfs.tar" .
podman import --quiet "$work/rootfs.tar" "$BASE_IMAGE" >/dev/null || fail "podman import of the base image failed"
rm -f "$IMAGE_UNAVAILABLE"
echo "base image $BASE_IMAGE built in $((SECONDS - start)) s"
