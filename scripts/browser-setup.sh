#!/usr/bin/env bash
# Install what tests/browser needs: Debian's chromium (apt, only when missing) and playwright-core
# (npm ci in tests/browser, redone only when its lock file changed). playwright-core drives the
# system chromium; it never downloads a browser of its own (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  source scripts/apt-install.sh
  # fonts-dejavu-core: text in the screenshots (chromium only recommends fonts).
  if ! apt_install browser-setup chromium fonts-dejavu-core; then
    echo "browser-setup: $APT_ERROR" >&2
    exit 1
  fi
  if ! command -v chromium >/dev/null 2>&1; then
    echo "browser-setup: apt-get installed chromium but it is not on PATH" >&2
    exit 1
  fi
fi

lock_hash=$(sha256sum tests/browser/package-lock.json | cut -d' ' -f1)
if [ "$(cat tests/browser/node_modules/.physarum-lock 2>/dev/null || true)" != "$lock_hash" ]; then
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$lock_hash" > tests/browser/node_modules/.physarum-lock
fi
