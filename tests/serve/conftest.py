"""Fixtures of the serving tests: small ONNX models, model repositories, `rootml serve` processes."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch

from rootml.export.repository import add_onnx_model

N_FEATURES = 6
TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class TinyMLP(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(N_FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
        )

    def forward(self, features, mask):
        return torch.sigmoid(self.net(features * mask.float()))


def mlp_onnx_bytes(seed: int = 0) -> bytes:
    """A tiny MLP as ONNX: features FP32 [-1, F], mask BOOL [-1, F] -> score FP32 [-1, 1]."""
    buffer = io.BytesIO()
    example = (torch.randn(2, N_FEATURES), torch.ones(2, N_FEATURES, dtype=torch.bool))
    torch.onnx.export(
        TinyMLP(seed).eval(),
        example,
        buffer,
        input_names=["features", "mask"],
        output_names=["score"],
        dynamic_axes={"features": {0: "batch"}, "mask": {0: "batch"}, "score": {0: "batch"}},
        dynamo=False,
    )
    return buffer.getvalue()


def make_inputs(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "features": rng.normal(size=(rows, N_FEATURES)).astype(np.float32),
        "mask": rng.random((rows, N_FEATURES)) > 0.2,
    }


def external_data_onnx(model_bytes: bytes, location: str) -> bytes:
    """The model with its first initializer moved to an external file at `location`."""
    proto = onnx.load_model_from_string(model_bytes)
    tensor = proto.graph.initializer[0]
    onnx.external_data_helper.set_external_data(tensor, location=location)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    return proto.SerializeToString()


def tar_gz(
    files: dict[str, bytes], links: dict[str, str] | None = None, hard: bool = False
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def upload(server, name: str, body: bytes, headers=AUTH) -> httpx.Response:
    """POST `body` to the upload route of model `name` (with the token by default)."""
    return httpx.post(
        f"{server.url}/v2/repository/models/{name}/upload",
        content=body,
        headers=headers,
        timeout=30,
    )


READY_WITHIN = 120  # seconds a test server may take to answer /v2/health/ready


def wait_ready(process: subprocess.Popen, url: str, seconds: float, verify=True) -> bool:
    """Whether the server at `url` answered /v2/health/ready with 200 within `seconds`, while
    its `process` runs. `verify`: httpx's (the CA file of a TLS server)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=5, verify=verify).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


class Server:
    """`rootml serve` in a subprocess on a free loopback port; always killed at the end.

    `entry`: how Python starts the command (`-m rootml.cli`, or `-c CODE` running it); `ca`: the
    certificate to trust when the server serves TLS (args with --tls-cert and --tls-key); `grpc`:
    serve gRPC too, on a free port (its address in `self.grpc`)."""

    def __init__(
        self, repo: Path, log: Path, *args: str, entry=("-m", "rootml.cli"), ca=None, grpc=False
    ):
        if grpc:
            grpc_port = free_port()
            self.grpc = f"127.0.0.1:{grpc_port}"
            args = (*args, "--grpc-port", str(grpc_port))
        self.port = free_port()
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        self.verify = str(ca) if ca else True
        self.address = f"127.0.0.1:{self.port}"
        self.log = log
        command = [
            sys.executable,
            *entry,
            "serve",
            "--repo",
            str(repo),
            "--port",
            str(self.port),
            *args,
        ]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        # Generous: starting imports onnxruntime and loads the models, seconds on a loaded
        # machine; a server that exits or never gets ready fails with the end of its log.
        if wait_ready(self.process, self.url, READY_WITHIN, verify=self.verify):
            return
        code = self.process.poll()
        self.stop()
        why = f"exited with {code}" if code is not None else f"not ready in {READY_WITHIN} s"
        raise RuntimeError(f"rootml serve did not become ready ({why}):\n{log.read_text()[-3000:]}")

    def alive(self) -> bool:
        return (
            self.process.poll() is None
            and httpx.get(f"{self.url}/v2/health/live", verify=self.verify).status_code == 200
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def mlp_bytes() -> bytes:
    return mlp_onnx_bytes(seed=0)


@pytest.fixture(scope="session")
def mlp2_bytes() -> bytes:
    return mlp_onnx_bytes(seed=1)


@pytest.fixture(scope="session")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="session")
def repo(tmp_path_factory, mlp_bytes) -> Path:
    """mlp (versions 1 and 2, same graph and rootml.json), mlp_batched (dynamic batching), fixed
    (no batch dim)."""
    path = tmp_path_factory.mktemp("repo")
    metadata = {"feature_names": [f"f{i}" for i in range(N_FEATURES)]}
    add_onnx_model(path, "mlp", mlp_bytes, metadata)
    add_onnx_model(path, "mlp", mlp_bytes, metadata)
    add_onnx_model(
        path,
        "mlp_batched",
        mlp_bytes,
        config={"dynamic_batching": {"max_queue_delay_microseconds": 20000}},
    )
    add_onnx_model(path, "fixed", mlp_bytes, max_batch_size=0)
    return path


@pytest.fixture(scope="session")
def server(repo, token_file, tmp_path_factory):
    """One server with the token, shared by the tests that do not change its models."""
    srv = Server(
        repo, tmp_path_factory.mktemp("log") / "serve.log", "--token-file", str(token_file)
    )
    yield srv
    srv.stop()
