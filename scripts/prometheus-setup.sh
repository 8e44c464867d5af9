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

source "$(dirname "$0")/apt-install.sh"
if ! apt_install prometheus-setup prometheus; then
  echo "prometheus-setup: $APT_ERROR" >&2
  exit 1
fi

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "prometheus-setup: apt-get installed prometheus but prometheus/promtool are not on PATH" >&2
  exit 1
fi
