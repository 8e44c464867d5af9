#!/usr/bin/env bash
# Build tests/interop/go09/bin/go09peer: the go-libp2p v0.9.2 partner configured as PhysarumSM's
# nodes (main.go; versions pinned by go.mod and go.sum as PhysarumSM's go.mod pins them, fetched
# from the Go module proxy into the module cache), with the go partner's builder.
#
#   bash tests/interop/go09/setup.sh        # idempotent, non-interactive, quiet when up to date
#
# The 2020 module graph builds unchanged with today's Go (TCP, WebSocket, secio, TLS, yamux, mplex;
# no QUIC). A fresh machine pays for the module download (~125 MB) and the compile: ~70 s on 2 busy
# cores (measured with empty GOMODCACHE and GOCACHE); later builds reuse Go's caches.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$HERE/../go/setup.sh" "$HERE" go09peer "go-libp2p v0.9 (PhysarumSM) interop partner"
