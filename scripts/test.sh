#!/usr/bin/env bash
# Installs everything the test suite needs and runs it: Debian packages (xrootd-server for the
# tests against a real XRootD server, curl for the README's examples, python3-venv when missing),
# then rootml with every extra and the test tools ([all,test]) into the project's virtual environment (.venv/, or the active
# one; scripts/setup_env.sh), with the test tools' versions from scripts/constraints.txt.
# Usage: bash scripts/test.sh [pytest args]. Fails on no tests collected (pytest exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

missing=()
command -v xrootd >/dev/null 2>&1 || missing+=(xrootd-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
use_project_venv
install_rootml ".[all,test]"

export ROOTML_REQUIRE_XROOTD=1
status=0
"$PY" -m pytest -q -p no:cacheprovider "$@" || status=$?
if [ "$status" = 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
