#!/usr/bin/env bash
# Build the rust-libp2p interop partner (tests/interop/rust: rust-libp2p from crates.io, versions
# pinned by Cargo.lock) into tests/interop/rust/target, which is also cargo's cache.
#
#   bash tests/interop/rust/setup.sh      # idempotent, non-interactive, quiet on success
#
# Fast path: a marker in target/ records the hash of Cargo.toml + Cargo.lock + src/ + this script
# + the rustc version; if it matches and the binary exists, nothing is done (no cargo call).
# Otherwise `cargo build --release --locked` (under nice: the machine's cores are shared), which
# reuses whatever target/ already holds. A fresh machine downloads ~170 crates from crates.io
# and compiles them (see the README's interop section for the time it takes).
# Env: CARGO (default: cargo on PATH, then ~/.cargo/bin/cargo).
# Exit status non-zero, with the reason on stderr, if the build fails.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TARGET="$HERE/target"
BIN="$TARGET/release/physarum-interop-rust-peer"
MARKER="$TARGET/.interop-built"

fail() { echo "tests/interop/rust/setup.sh: $*" >&2; exit 1; }

CARGO="${CARGO:-$(command -v cargo || true)}"
if [ -z "$CARGO" ] && [ -x "$HOME/.cargo/bin/cargo" ]; then
  CARGO="$HOME/.cargo/bin/cargo"
fi
[ -n "$CARGO" ] || fail "cargo is not on PATH: install Rust >= 1.88 (rustup or Debian's cargo)"
rustc_version="$("$(dirname "$CARGO")/rustc" -V 2>/dev/null || rustc -V 2>/dev/null)" \
  || fail "rustc does not run"

want="$(cd "$HERE" && cat Cargo.toml Cargo.lock setup.sh $(find src -type f | LC_ALL=C sort) \
        <(echo "$rustc_version") | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$want" ] && [ -x "$BIN" ]
}
up_to_date && exit 0

# Serialise concurrent runs (e.g. parallel test workers) on a lock outside the source tree.
lock="${TMPDIR:-/tmp}/physarum-interop-rust-$(printf '%s' "$HERE" | sha256sum | cut -c1-16).lock"
exec 9>"$lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 1800 9 || fail "timed out waiting for $lock"
fi
up_to_date && exit 0

start=$SECONDS
mkdir -p "$TARGET"
log="$TARGET/build.log"
rm -f "$MARKER"
if ! nice -n 10 "$CARGO" build --release --locked --manifest-path "$HERE/Cargo.toml" \
     --target-dir "$TARGET" >"$log" 2>&1 </dev/null; then
  tail -n 40 "$log" >&2
  fail "cargo build failed (full log: $log)"
fi
[ -x "$BIN" ] || fail "cargo build succeeded but $BIN is missing"

# The program starts and speaks the partner protocol: a ready event, then the answer to stop.
out="$(printf '{"id":1,"cmd":"stop"}\n' | timeout 20 "$BIN" --no-listen 2>>"$log")" \
  || fail "$BIN did not start (log: $log)"
case "$out" in
  *'"event":"ready"'*'"ok":true'*) ;;
  *) fail "$BIN did not answer as a partner: $out" ;;
esac

echo "$want" >"$MARKER"
echo "rust-libp2p interop peer built in $((SECONDS - start)) s: $BIN"
