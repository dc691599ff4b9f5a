#!/usr/bin/env bash
# Install the Debian packages two tests drive: chromium (tests/ops/test_dagster_ui.py) and
# docker-compose (tests/ops/test_compose.py runs `docker-compose config`; no daemon needed).
# Idempotent. Installs only where it can without asking (root with apt-get, as in CI);
# elsewhere it says how, and those tests skip locally (with CI=true they fail instead).
set -eu
missing=""
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing="$missing docker-compose"
[ -n "$missing" ] || exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-tools: missing:$missing (e.g. 'sudo apt-get install$missing'); their tests skip" >&2
  exit 0
fi
echo "install-test-tools: installing$missing (Debian packages)" >&2
apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
