#!/usr/bin/env bash
# Build tests/interop/py/.venv: py-libp2p 0.8.1 (exact pins from requirements.txt) for the interop
# peer peer.py. Its own virtualenv, so py-libp2p's pins never constrain physarum's environment.
#
#   bash tests/interop/py/setup.sh        # idempotent, non-interactive, quiet on success
#
# Fast path (~0.05 s): a marker in the venv records the hash of requirements.txt + this script +
# the interpreter version; if it matches and the venv's python still runs, nothing is done.
# Otherwise the venv is rebuilt from scratch (~20-25 s: fastecdsa is compiled from source, which
# needs gcc and libgmp-dev; missing Debian packages are installed with apt-get).
# Env: INTEROP_PY_PYTHON picks the base interpreter (default: python3, must be >= 3.10).
# Exit status non-zero, with the reason on stderr, if anything cannot be installed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
REQ="$HERE/requirements.txt"
MARKER="$VENV/.interop-installed"
PYTHON="${INTEROP_PY_PYTHON:-python3}"
LIBP2P_VERSION="0.8.1"

fail() { echo "tests/interop/py/setup.sh: $*" >&2; exit 1; }

[ -f "$REQ" ] || fail "missing $REQ"
command -v "$PYTHON" >/dev/null 2>&1 || fail "no '$PYTHON' interpreter on PATH (set INTEROP_PY_PYTHON)"
pyver="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" \
  || fail "'$PYTHON' does not run"

want="$(cat "$REQ" "${BASH_SOURCE[0]}" <(echo "$pyver") | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$want" ] \
    && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}
up_to_date && exit 0

# Serialise concurrent runs (e.g. parallel test workers) on a lock outside the source tree.
lock="${TMPDIR:-/tmp}/physarum-interop-py-$(printf '%s' "$HERE" | sha256sum | cut -c1-16).lock"
exec 9>"$lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 900 9 || fail "timed out waiting for $lock"
fi
up_to_date && exit 0

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || fail "py-libp2p $LIBP2P_VERSION needs Python >= 3.10, '$PYTHON' is $pyver"
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 \
  || fail "'$PYTHON' lacks venv/ensurepip (Debian: apt-get install python3-venv)"

# --- system packages needed to compile fastecdsa (C extension against GMP) --------------------
need=()
for pkg in gcc libgmp-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ! "$PYTHON" -c 'import os, sysconfig, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'; then
  need+=("python3-dev")
fi
if [ "${#need[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || fail "need Debian packages ${need[*]} but apt-get is not available"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "need root (or sudo) to apt-get install ${need[*]}"
    sudo="sudo -n"
  fi
  aptlog="$(mktemp)"
  if ! { DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
       >"$aptlog" 2>&1 </dev/null; then
    tail -n 40 "$aptlog" >&2
    rm -f "$aptlog"
    fail "apt-get install ${need[*]} failed"
  fi
  rm -f "$aptlog"
fi

# --- the virtualenv, rebuilt from scratch so it holds exactly requirements.txt ----------------
start=$SECONDS
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" || fail "could not create $VENV"
log="$VENV/install.log"
if ! PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
     "$VENV/bin/python" -m pip install --require-virtualenv -r "$REQ" >"$log" 2>&1 </dev/null; then
  grep -v "^WARNING: Location '" "$log" | tail -n 40 >&2
  fail "pip install -r requirements.txt failed (full log: $log)"
fi
got="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("libp2p"))' 2>&1)" \
  || fail "libp2p not importable after install: $got"
[ "$got" = "$LIBP2P_VERSION" ] || fail "installed libp2p $got, expected $LIBP2P_VERSION"
"$VENV/bin/python" -c 'import libp2p, libp2p.security.noise.transport, libp2p.stream_muxer.yamux.yamux, fastecdsa' \
  >/dev/null 2>>"$log" || { tail -n 20 "$log" >&2; fail "import libp2p failed (log: $log)"; }

echo "$want" >"$MARKER"
echo "py-libp2p $LIBP2P_VERSION interop venv ready in $((SECONDS - start)) s: $VENV"
