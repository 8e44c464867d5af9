#!/usr/bin/env bash
# Install everything the test suite needs, then run it: the project in .venv, the js-libp2p
# interop peer (npm ci), the py-libp2p interop peer (its own venv), Prometheus (apt), then lint,
# types and pytest.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2> >(grep -v '^WARNING: Location' >&2)

# js-libp2p interop peer: reinstall only when the lock file changed.
lock_hash=$(sha256sum tests/interop/js/package-lock.json | cut -d' ' -f1)
if [ "$(cat tests/interop/js/node_modules/.physarum-lock 2>/dev/null || true)" != "$lock_hash" ]; then
  (cd tests/interop/js && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$lock_hash" > tests/interop/js/node_modules/.physarum-lock
fi

# py-libp2p interop peer, in a virtualenv of its own so its pins never constrain ours.
bash tests/interop/py/setup.sh

# go-libp2p interop peer, built from tests/interop/go (Go module proxy); rebuilt when its sources change.
bash tests/interop/go/setup.sh

# go-libp2p v0.9.2 peer configured as PhysarumSM's nodes (tests/interop/go09, Go module proxy).
bash tests/interop/go09/setup.sh

# rust-libp2p interop peer, built from tests/interop/rust (crates.io, Cargo.lock); rebuilt when its sources change.
bash tests/interop/rust/setup.sh

# A real Prometheus (and promtool) for the scrape tests: Debian's package.
bash scripts/prometheus-setup.sh

# Debian's chromium and playwright-core (npm ci, cached by lock hash) for the topology page test (tests/browser).
bash scripts/browser-setup.sh

# podman serving the Docker Engine API, and the busybox test image, for the allocator's docker
# runtime (Debian's podman, runc, catatonit and busybox-static; built once).
bash tests/containers/setup.sh
# tests/deploy: the image's debootstrap base, its dependency wheels and a kustomize renderer (Go).
bash tests/containers/image-setup.sh

.venv/bin/python -m ruff check src tests bench
.venv/bin/python -m mypy
.venv/bin/python -m pytest -q "$@"
