# Sourced by scripts/demo.sh and scripts/test.sh, from the repository root: the project's Python
# environment and the Debian packages the scripts need.
#
# pip never writes into the system Python: Debian's /usr/bin/python3 refuses it (PEP 668,
# "externally-managed-environment"). An active virtual environment ($VIRTUAL_ENV) is used as it
# is; otherwise the project's own, .venv/ (or $ROOTML_VENV), is made when missing and reused when
# present. Its bin/ goes first on PATH, so `rootml` and `python` are the environment's.

# torch pinned in every install: a bare `torch` pulls a multi-GB CUDA build; 2.13.0 is the CPU
# wheel on these machines.
TORCH_REQUIREMENT="torch==2.13.0"
# Versions of the test tools known to pass together (a fresh resolve found pytest 9.2.0, which
# schemathesis 4.32.5 does not run under).
CONSTRAINTS=scripts/constraints.txt

apt_install() { # apt_install PACKAGE...: with apt-get, as root or through sudo
  local sudo=
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "error: missing $*; install as root: apt-get install $*" >&2
      return 1
    fi
    sudo=sudo
  fi
  echo "installing $* (apt-get)" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

use_project_venv() { # sets VIRTUAL_ENV, PATH and PY
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    echo "using the active virtual environment $VIRTUAL_ENV" >&2
  else
    VIRTUAL_ENV=${ROOTML_VENV:-.venv}
    case $VIRTUAL_ENV in /*) ;; *) VIRTUAL_ENV=$PWD/$VIRTUAL_ENV ;; esac
    # Reused when its Python runs and it has pip; remade (--clear) when a failed attempt (no
    # ensurepip) left it without.
    if ! { [ -x "$VIRTUAL_ENV/bin/pip" ] && "$VIRTUAL_ENV/bin/python" -c '' 2>/dev/null; }; then
      command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
      if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "error: rootml needs Python >= 3.10; python3 is $(python3 -V 2>&1)" >&2
        return 1
      fi
      # Debian ships venv's pip bootstrap (ensurepip) apart, in python3-venv.
      python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
      echo "making the virtual environment $VIRTUAL_ENV" >&2
      python3 -m venv --clear "$VIRTUAL_ENV"
    fi
  fi
  export VIRTUAL_ENV PATH="$VIRTUAL_ENV/bin:$PATH"
  PY=$VIRTUAL_ENV/bin/python
}

install_rootml() { # install_rootml TARGET (".[all]" or ".[all,test]"): pip install -e, skipped when done
  # A no-op `pip install -e` still takes ~15-30 s (it rebuilds the editable wheel), so the inputs
  # of the last install are kept in the environment and an unchanged one is not repeated.
  local target=$1 stamp="$VIRTUAL_ENV/.rootml-install" key
  key=$(cat pyproject.toml "$CONSTRAINTS" | sha256sum | cut -c1-16)
  key="$key $PWD $TORCH_REQUIREMENT"
  # An install with the test tools holds every other one.
  if [ -f "$stamp" ] && { grep -qxF "$key $target" "$stamp" || grep -qxF "$key .[all,test]" "$stamp"; } &&
    "$PY" -c 'import importlib.util as u, sys
spec = u.find_spec("rootml")  # where it is, without importing it (and torch)
sys.exit(spec is None or not spec.origin.startswith(sys.argv[1]))' "$PWD/src"; then
    echo "rootml $target already installed in $VIRTUAL_ENV" >&2
    return
  fi
  echo "installing rootml $target into $VIRTUAL_ENV (pip)" >&2
  "$PY" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" "$TORCH_REQUIREMENT" -e "$target"
  echo "$key $target" >>"$stamp"
}
