#!/usr/bin/env bash
# Installs everything the test suite needs and runs it: Debian packages (xrootd-server for the
# tests against a real XRootD server, curl for the README's examples, cmake, g++ and Debian's gRPC
# and protobuf for the C++ client of examples/cpp, python3-venv when missing),
# then rootml with its test extras into the project's virtual environment (.venv/, or the active
# one; scripts/setup_env.sh), with the test tools' versions from scripts/constraints.txt.
# Usage: bash scripts/test.sh [pytest args]. Fails on no tests collected (pytest exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

missing=()
command -v xrootd >/dev/null 2>&1 || missing+=(xrootd-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v grpc_cpp_plugin >/dev/null 2>&1 || missing+=(protobuf-compiler-grpc)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
pkg-config --exists grpc++ protobuf 2>/dev/null || missing+=(libgrpc++-dev libprotobuf-dev)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
use_project_venv
install_rootml ".[test]"

export ROOTML_REQUIRE_XROOTD=1
export ROOTML_REQUIRE_CPP=1
status=0
"$PY" -m pytest -q -p no:cacheprovider "$@" || status=$?
if [ "$status" = 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
