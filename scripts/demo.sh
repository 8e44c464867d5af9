#!/usr/bin/env bash
# Install physarum into .venv and start a local private network that pings once a second.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e . 2> >(grep -v "^WARNING: Location" >&2)
exec .venv/bin/physarum demo "$@"
