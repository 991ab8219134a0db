"""examples/cpp: a C++ client built from the server's .proto files with Debian's gRPC and
protobuf (cmake, protoc, grpc_cpp_plugin), sending 1024 rows in raw_input_contents to
`rootml serve --grpc-port`; its scores equal onnxruntime's.

The build takes minutes on a busy 2-core machine: it is made once, in a folder of the system's
temporary directory named by a hash of the sources, and reused while they are unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from rootml.export.repository import add_onnx_model
from tests.serve.conftest import Server, make_inputs

pytestmark = pytest.mark.cpp

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cpp"
PROTOS = ROOT / "src" / "rootml" / "serve" / "grpc"
TOOLS = ("cmake", "c++", "pkg-config", "protoc", "grpc_cpp_plugin")
PACKAGES = (
    "cmake g++ pkg-config libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc"
)


def _require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        if os.environ.get("ROOTML_REQUIRE_CPP") == "1":
            pytest.fail(f"ROOTML_REQUIRE_CPP=1 but no {missing}: apt-get install {PACKAGES}")
        pytest.skip(f"no {missing}: apt-get install {PACKAGES} (ROOTML_REQUIRE_CPP=1 to fail)")


@pytest.fixture(scope="session")
def rootml_infer() -> Path:
    _require_tools()
    sources = sorted(EXAMPLE.glob("*")) + sorted(PROTOS.glob("*.proto"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources))
    build = Path(tempfile.gettempdir()) / f"rootml-cpp-{digest.hexdigest()[:16]}"
    binary = build / "rootml_infer"
    if not binary.exists():
        configure = ["cmake", "-S", str(EXAMPLE), "-B", str(build)]
        for command in (configure, ["cmake", "--build", str(build), "-j", "2"]):
            result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return binary


@pytest.fixture(scope="module")
def server(tmp_path_factory, mlp_bytes):
    repo = tmp_path_factory.mktemp("cpp-repo")
    add_onnx_model(repo, "mlp", mlp_bytes)
    add_onnx_model(
        repo,
        "mlp_batched",
        mlp_bytes,
        config={"dynamic_batching": {"max_queue_delay_microseconds": 500}},
    )
    srv = Server(repo, tmp_path_factory.mktemp("cpp-log") / "serve.log", grpc=True)
    yield srv
    srv.stop()


def _run(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("model", ["mlp", "mlp_batched"])
def test_cpp_client_scores_1024_rows_as_onnxruntime(
    rootml_infer, server, mlp_bytes, tmp_path, model
):
    inputs = make_inputs(1024, seed=11)
    inputs["features"].astype("<f4").tofile(tmp_path / "features.bin")
    inputs["mask"].astype(np.bool_).tofile(tmp_path / "mask.bin")
    result = _run(
        rootml_infer,
        "--address", server.grpc,
        "--model", model,
        "--input", f"features:FP32:1024x6:{tmp_path / 'features.bin'}",
        "--input", f"mask:BOOL:1024x6:{tmp_path / 'mask.bin'}",
        "--output", f"score:{tmp_path / 'score.bin'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"score FP32 [1024,1] {1024 * 4} bytes"
    scores = np.fromfile(tmp_path / "score.bin", "<f4").reshape(1024, 1)
    want = ort.InferenceSession(mlp_bytes, providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    np.testing.assert_array_equal(scores, want)


def test_cpp_client_gets_the_status_and_message(rootml_infer, server, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0" * 8)
    result = _run(
        rootml_infer, "--address", server.grpc, "--model", "nope",
        "--input", f"x:FP32:2:{tmp_path / 'x.bin'}", "--output", f"y:{tmp_path / 'y.bin'}",
    )  # fmt: skip
    assert result.returncode == 1
    # ModelMetadata of an unknown model: NOT_FOUND (5), the model named.
    assert "ModelMetadata: gRPC status 5: unknown model 'nope'" in result.stderr
    short = np.zeros((4, 6), "<f4")
    short.tofile(tmp_path / "short.bin")
    result = _run(
        rootml_infer, "--address", server.grpc, "--model", "mlp",
        "--input", f"features:FP32:8x6:{tmp_path / 'short.bin'}",
        "--input", f"mask:BOOL:8x6:{tmp_path / 'x.bin'}", "--output", f"score:{tmp_path / 's.bin'}",
    )  # fmt: skip
    assert result.returncode == 1
    assert "ModelInfer: gRPC status 3: input 'features'" in result.stderr  # INVALID_ARGUMENT
    assert "raw_input_contents[0] has 96 bytes" in result.stderr
