#!/usr/bin/env bash
# Build tests/deploy/kustomize/bin/kustomize: `kustomize DIR` renders a kustomization as
# `kubectl kustomize DIR` does, with sigs.k8s.io/kustomize/api pinned by go.mod and go.sum (Go module
# proxy), using the go partner's builder (rebuilt only when these sources change).
#
#   bash tests/deploy/kustomize/setup.sh     # idempotent, non-interactive, quiet when up to date
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec nice bash "$HERE/../../interop/go/setup.sh" "$HERE" kustomize "kustomize renderer (deploy tests)"
