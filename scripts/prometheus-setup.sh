#!/usr/bin/env bash
# Install Prometheus and promtool (Debian's `prometheus` package) for tests/integration/test_prometheus.py
# and the `promtool check metrics` test. Idempotent: does nothing when both are already on PATH.
#
# The package's maintainer scripts may try to start a prometheus service (on :9090). In a container
# without systemd nothing starts; if one does, the tests never use port 9090 and leave it alone.
# policy-rc.d (exit 101) asks invoke-rc.d not to start services during the install, where it is honoured.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "prometheus-setup: need root (or sudo) to apt-get install prometheus" >&2
    exit 1
  fi
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  created_policy=1
fi
cleanup() {
  if [ "$created_policy" = 1 ]; then
    $SUDO rm -f "$policy"
  fi
}
trap cleanup EXIT

$SUDO apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "prometheus-setup: apt-get installed prometheus but prometheus/promtool are not on PATH" >&2
  exit 1
fi
