#!/usr/bin/env bash
# Installs everything the test suite needs and runs it: Debian packages (xrootd-server for the
# tests against a real XRootD server, curl for the README's examples, cmake, g++ and Debian's gRPC
# and protobuf for the C++ client of examples/cpp, python3-venv when missing, the Python shared
# library that Triton's python backend embeds), then rootml with every extra and the test tools
# ([all,test]) into the project's virtual environment (.venv/, or the active one;
# scripts/setup_env.sh), with the test tools' versions from scripts/constraints.txt, and NVIDIA
# Triton's binary (the nvidia-pytriton wheel, without its Python dependencies) for
# tests/serve/test_triton_parity.py.
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
use_project_venv
# Triton's python backend stub links the environment's Python as a shared library (Debian:
# libpython3.X, not pulled in by python3).
python=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
"$PY" -c "import ctypes; ctypes.CDLL('libpython$python.so.1.0')" 2>/dev/null ||
  missing+=("libpython$python")
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
install_rootml ".[all,test]"
triton=$(grep -E '^nvidia-pytriton==' "$CONSTRAINTS")
if ! "$PY" -c 'import importlib.metadata as m, sys
sys.exit(m.version("nvidia-pytriton") != sys.argv[1])' "${triton#*==}" 2>/dev/null; then
  echo "installing $triton (pip --no-deps: its tritonserver binary only)" >&2
  "$PY" -m pip install -q --disable-pip-version-check --no-deps "$triton"
fi

export ROOTML_REQUIRE_XROOTD=1 ROOTML_REQUIRE_TRITON=1 ROOTML_REQUIRE_CPP=1
status=0
"$PY" -m pytest -q -p no:cacheprovider "$@" || status=$?
if [ "$status" = 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
