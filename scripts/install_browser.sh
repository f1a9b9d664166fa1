#!/usr/bin/env bash
# Install what the browser test (tests/test_browser_dashboard.py, marker `browser`) needs:
# Debian's chromium (never a browser downloaded by `playwright install`) and the
# playwright Python package that drives it. Idempotent; CI calls it before the tests.
# Usage: scripts/install_browser.sh [python]   (default: python3, or $PYTHON)
set -euo pipefail
PY="${1:-${PYTHON:-python3}}"

if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq chromium >/dev/null
fi
chromium --version 2>/dev/null | tail -n 1

if ! "$PY" -c "import playwright" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "playwright>=1.45"
fi
"$PY" -c "import playwright, shutil; print('playwright ok; chromium at', shutil.which('chromium'))"
