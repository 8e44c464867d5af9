#!/usr/bin/env bash
# Make a kustomize overlay of deploy/k8s for a network of your own: a new private-network key, a new
# identity for the monitor, and the bootstrap address that goes with it, replacing the public
# example keys of the base.
#
#   deploy/k8s/new-network.sh DIR            # then: kubectl apply -k DIR
#
# DIR must not exist. It gets kustomization.yaml, swarm.key and identity.key (mode 0600): keep them
# as secret as the network. Needs physarum installed (the `physarum` command and its Python; set
# PHYSARUM and PYTHON to use others, e.g. a checkout's .venv/bin/physarum and .venv/bin/python).
# Edit DIR/kustomization.yaml afterwards for the image your cluster pulls (`images:`) or a namespace.
set -euo pipefail

[ "$#" -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
out="$1"
base="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PHYSARUM="${PHYSARUM:-physarum}"
PYTHON="${PYTHON:-python3}"

[ ! -e "$out" ] || { echo "$0: $out exists; give a new directory" >&2; exit 1; }
mkdir -p "$out"
umask 077
"$PHYSARUM" key generate -o "$out/swarm.key" 2>/dev/null
peer_id="$("$PYTHON" -c '
import sys
from physarum.overlay.identity import KeyPair, save_key_pair
pair = KeyPair.generate()
save_key_pair(sys.argv[1], pair)
print(pair.peer_id)' "$out/identity.key")"
rel="$("$PYTHON" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$base" "$out")"

cat >"$out/kustomization.yaml" <<YAML
# A physarum network made by deploy/k8s/new-network.sh: the base with keys of its own.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel
secretGenerator:
  - name: physarum-psk
    behavior: replace
    files:
      - swarm.key
  - name: physarum-monitor-identity
    behavior: replace
    files:
      - identity.key
configMapGenerator:
  # The monitor's multiaddr: peer id of identity.key.
  - name: physarum-bootstrap
    behavior: replace
    literals:
      - P2P_BOOTSTRAPS=/dns/monitor-0.monitor/tcp/4001/p2p/$peer_id
YAML
chmod 0644 "$out/kustomization.yaml"
echo "wrote $out (monitor peer id $peer_id): kubectl apply -k $out"
