#!/usr/bin/env bash
# Install Debian's chromium for the browser test (tests/ops/test_dagster_ui.py); idempotent.
# Installs only where it can without asking (root with apt-get, as in CI); elsewhere it says how
# and the browser test skips locally (with CI=true a missing chromium fails that test).
set -eu
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: chromium is missing; install it (e.g. 'sudo apt-get install chromium') to run the browser test" >&2
  exit 0
fi
echo "install-browser: installing chromium (Debian package)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null 2>&1
