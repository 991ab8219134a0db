#!/usr/bin/env bash
# Installs everything the test suite needs (pip packages, Debian's xrootd-server) and runs it.
# Usage: bash scripts/test.sh [pytest args]. Fails on no tests collected (pytest exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v xrootd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xrootd-server >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xrootd-server >/dev/null
  fi
fi
# torch pinned: a bare `torch` pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel on these machines.
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[test]"

export ROOTML_REQUIRE_XROOTD=1
status=0
python3 -m pytest -q -p no:cacheprovider "$@" || status=$?
if [ "$status" = 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
