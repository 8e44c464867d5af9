#!/usr/bin/env bash
# Build tests/interop/go/bin/gopeer: the go-libp2p interop partner (main.go; versions pinned by
# go.mod and go.sum, fetched from the Go module proxy into the module cache).
#
#   bash tests/interop/go/setup.sh        # idempotent, non-interactive, quiet when up to date
#
# Fast path (~0.01 s): bin/.built holds the SHA-256 of go.mod + go.sum + main.go + this script;
# if it matches and the binary exists, nothing is done. tests/interop/partner.py computes the same
# hash and refuses to start a binary built from other sources.
# Otherwise `go build` (go.mod and go.sum are never changed: -mod=readonly). A fresh machine pays
# for the module download and the whole compile: ~0.5 min to fetch and ~2-3 min to build on 2
# cores (measured in README); later builds reuse Go's module and build caches.
# Env: GO picks the go command (default: go on PATH, else /usr/local/go/bin/go); it must be at
# least the version go.mod names (GOTOOLCHAIN=local: no toolchain is downloaded behind our back).
# Exit status non-zero, with the reason on stderr, if the partner cannot be built.
# Other Go partners build through this script: `setup.sh MODULE_DIR BINARY_NAME LABEL` (go09 does).
set -euo pipefail

HERE="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")}" && pwd)"
NAME="$(basename "$HERE")"
BIN="$HERE/bin/${2:-gopeer}"
LABEL="${3:-go-libp2p interop partner}"
MARKER="$HERE/bin/.built"

fail() { echo "tests/interop/$NAME/setup.sh: $*" >&2; exit 1; }

for f in go.mod go.sum main.go; do
  [ -f "$HERE/$f" ] || fail "missing $HERE/$f"
done
want="$(cd "$HERE" && cat go.mod go.sum main.go setup.sh | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [ -x "$BIN" ] && [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$want" ]
}
up_to_date && exit 0

GO="${GO:-$(command -v go || true)}"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then
  GO=/usr/local/go/bin/go
fi
[ -n "$GO" ] || fail "no go command on PATH (install Go >= $(sed -n 's/^go //p' "$HERE/go.mod"), or set GO)"

# Serialise concurrent runs (e.g. parallel test workers) on a lock outside the source tree.
lock="${TMPDIR:-/tmp}/physarum-interop-$NAME-$(printf '%s' "$HERE" | sha256sum | cut -c1-16).lock"
exec 9>"$lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 900 9 || fail "timed out waiting for $lock"
fi
up_to_date && exit 0

start=$SECONDS
mkdir -p "$HERE/bin"
rm -f "$MARKER"
log="$(mktemp "${TMPDIR:-/tmp}/physarum-interop-$NAME-build.XXXXXX")"
# -trimpath and no symbol table: a smaller binary whose build does not depend on this path.
if ! (cd "$HERE" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
      "$GO" build -trimpath -ldflags='-s -w' -o "$BIN.tmp" .) >"$log" 2>&1 </dev/null; then
  tail -n 40 "$log" >&2
  rm -f "$log" "$BIN.tmp"
  fail "go build failed ($("$GO" version 2>&1 || echo "go does not run"))"
fi
rm -f "$log"
mv "$BIN.tmp" "$BIN"
echo "$want" >"$MARKER"
echo "$LABEL built in $((SECONDS - start)) s: $BIN"
