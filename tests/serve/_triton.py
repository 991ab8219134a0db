"""NVIDIA Triton 2.51 on loopback, for checking rootml against the server its layout follows.

The binary comes from PyPI's nvidia-pytriton 0.7.0 wheel (installed with --no-deps by
scripts/test.sh: its numpy<2 pin would downgrade the environment, and only the binary is used,
never the pytriton package). It has the python backend only: PyPI has no onnxruntime backend.
So `python_backend_copy` copies a repository with each config.pbtxt's platform line swapped for
the python backend and a model.py per version that runs the version's ONNX file with
onnxruntime; every other line of the config stays as rootml wrote it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rootml.export.model_config import model_file_name
from rootml.export.pbtxt import format_config, parse_config
from tests.conftest import free_port
from tests.serve.conftest import wait_ready

WHEEL = "nvidia-pytriton==0.7.0"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

# The python backend's model (test code, written into each version folder of the copy).
MODEL_PY = '''"""Triton python backend model: {filename} of this version, run by onnxruntime."""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# This backend (Triton 2.51) reads numpy 2 arrays wrongly through its buffer path (outputs come
# back empty); DLPack does not go through it. numpy 1 takes the backend's own path.
NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def read(tensor):
    return np.from_dlpack(tensor) if NUMPY_2 else tensor.as_numpy()


def write(name, array):
    if NUMPY_2:
        return pb_utils.Tensor.from_dlpack(name, array)
    return pb_utils.Tensor(name, array)


class TritonPythonModel:
    def initialize(self, args):
        path = Path(args["model_repository"]) / args["model_version"] / {filename!r}
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # as rootml serve runs it
        self.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        answers = []
        for request in requests:
            feeds = {{n: read(pb_utils.get_input_tensor_by_name(request, n)) for n in self.inputs}}
            results = self.session.run(self.outputs, feeds)
            tensors = [write(n, np.ascontiguousarray(r)) for n, r in zip(self.outputs, results)]
            answers.append(pb_utils.InferenceResponse(tensors))
        return answers
'''

_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*(.*?)\s*\|$", re.MULTILINE)


def _missing(why: str) -> None:
    if os.environ.get("ROOTML_REQUIRE_TRITON") == "1":
        pytest.fail(f"ROOTML_REQUIRE_TRITON=1 but {why}")
    pytest.skip(why)


def triton_home() -> Path:
    """The wheel's tritonserver folder (bin/, backends/, python_backend_stubs/); skips (fails
    with ROOTML_REQUIRE_TRITON=1) where the wheel or what its binaries need is missing."""
    spec = importlib.util.find_spec("pytriton")  # found, not imported
    if spec is None or spec.origin is None:
        _missing(f"no Triton binary: pip install --no-deps {WHEEL} (scripts/test.sh does)")
    home = Path(spec.origin).parent / "tritonserver"
    if not (home / "python_backend_stubs" / PYTHON).is_dir():
        _missing(f"{WHEEL} has no python backend stub for Python {PYTHON}")
    try:  # the stub embeds this Python's shared library
        ctypes.CDLL(f"libpython{PYTHON}.so.1.0")
    except OSError:
        _missing(f"libpython{PYTHON}.so.1.0 is missing: apt-get install libpython{PYTHON}")
    return home


def backends(home: Path, folder: Path) -> Path:
    """A backend folder holding the python backend with the stub of this Python (the wheel keeps
    one stub per Python version apart, as pytriton copies it in place)."""
    python = folder / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python / name).symlink_to(home / "backends" / "python" / name)
    stub = home / "python_backend_stubs" / PYTHON / "triton_python_backend_stub"
    (python / "triton_python_backend_stub").symlink_to(stub)
    return folder


def _command(home: Path, backend_dir: Path, repo: Path, *args: str) -> list[str]:
    return [
        str(home / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={backend_dir}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        "--exit-timeout-secs=5",
        *args,
    ]


def _environment() -> dict[str, str]:
    # The stub's embedded Python takes its environment from the `python3` first on PATH (as
    # pytriton sets it up): this one's, so model.py imports its numpy and onnxruntime.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def model_states(log: str) -> dict[tuple[str, int], str]:
    """(model, version) -> status from the model table Triton prints after loading (the table
    after the header `| Model | Version | Status |`, up to the blank line that ends it)."""
    header = re.search(r"^\|\s*Model\s*\|\s*Version\s*\|\s*Status\s*\|$", log, re.MULTILINE)
    if header is None:
        return {}
    table = log[header.end() :].split("\n\n", 1)[0]
    return {(m, int(v)): status for m, v, status in _ROW.findall(table)}


def load_only(home: Path, backend_dir: Path, repo: Path, timeout: float = 60) -> str:
    """Start Triton on `repo` (no model control, no HTTP), let it load everything and exit
    (it stops when a model fails to load); its log."""
    command = _command(home, backend_dir, repo, "--allow-http=false")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=_environment()
    )
    return done.stdout + done.stderr


class Triton:
    """tritonserver serving `repo` over HTTP on a free loopback port, models under explicit
    control, all loaded at start; stopped (SIGTERM, so the python backend frees its shared
    memory, then SIGKILL) at the end."""

    def __init__(self, home: Path, backend_dir: Path, repo: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.log = log
        command = _command(
            home,
            backend_dir,
            repo,
            "--http-address=127.0.0.1",
            f"--http-port={self.port}",
            "--model-control-mode=explicit",
            "--load-model=*",
            "--exit-on-error=false",  # models it refuses are part of what is compared
            "--strict-readiness=false",
        )
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_environment(),
                start_new_session=True,
            )
        # HTTP starts once the models given at start have loaded (or failed to).
        if wait_ready(self.process, self.url, 90):
            return
        self.stop()
        raise RuntimeError(f"tritonserver did not start:\n{log.read_text()[-3000:]}")

    def states(self) -> dict[tuple[str, int], str]:
        return model_states(self.log.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def python_backend_copy(repo: Path, out: Path) -> Path:
    """A copy of model repository `repo` that Triton's python backend serves: each config's
    platform becomes `backend: "python"` (default_model_filename goes: the python backend's file
    is model.py), and each version gets a model.py running its model file."""
    shutil.copytree(repo, out)
    for config_path in out.glob("*/config.pbtxt"):
        config = parse_config(config_path.read_text())
        filename = model_file_name(config)
        config.pop("default_model_filename", None)
        config.pop("platform", None)
        config = {
            "name": config.pop("name", config_path.parent.name),
            "backend": "python",
            **config,
        }
        config_path.write_text(format_config(config))
        for version in config_path.parent.iterdir():
            if version.name.isdigit():
                (version / "model.py").write_text(MODEL_PY.format(filename=filename))
    return out
