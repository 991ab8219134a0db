"""What the client and the server load: a client is not the server, a server is not torch.

`import rootml.client` must not load the server's stack (FastAPI, onnxruntime), torch, uproot or
awkward; a `rootml serve` process serving a model with Specs, raw branch columns included, must
not load torch or uproot (nor the streaming layer, batch scoring or the client). The process is
the real command: its modules are read from `sys.modules` at its exit, and its memory map is
read from /proc while it serves, so an import made late (on the first raw request) is seen too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import awkward as ak
import httpx
import numpy as np
import orjson
import pytest

from rootml.export.repository import add_onnx_model
from rootml.protocol import decode_infer_response, encode_infer_request
from tests.serve._physics_model import (
    HZZ,
    HZZ_BRANCHES,
    add_model,
    hzz_specs,
    read_columns,
    reference_inputs,
    run_onnx,
)
from tests.serve.conftest import Server, make_inputs, mlp_onnx_bytes

ROWS = 20
CLIENT_MUST_NOT_LOAD = ("torch", "fastapi", "starlette", "uproot", "onnx", "onnxruntime", "awkward")
SERVER_MUST_NOT_LOAD = ("torch", "uproot", "rootml.datasets", "rootml.predict", "rootml.client")
# What a server of plain ONNX models (no Specs, no raw branch columns) needs neither: awkward and
# the pyarrow it pulls in are ~50 MB of RSS in every server process.
PLAIN_SERVER_MUST_NOT_LOAD = (*SERVER_MUST_NOT_LOAD, "awkward", "pyarrow", "rootml.transforms")
# `rootml serve ARGS` that writes the names in sys.modules to $MODULES_OUT when it exits. uvicorn
# stops on SIGTERM, then raises it again for the handler it found: an exit that runs atexit.
LAUNCHER = """
import atexit, json, os, signal, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write(json.dumps(sorted(sys.modules))))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
from rootml.cli import main
sys.exit(main(sys.argv[1:]))
"""


def modules_after(code: str) -> set[str]:
    """The top-level and rootml module names loaded by `code` in a fresh interpreter."""
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_client_loads_neither_the_server_nor_torch_uproot_awkward():
    loaded = modules_after("import rootml.client")
    assert {"rootml.client", "rootml.protocol", "httpx"} <= loaded
    assert not loaded & set(CLIENT_MUST_NOT_LOAD), sorted(loaded & set(CLIENT_MUST_NOT_LOAD))
    assert not {m for m in loaded if m.startswith("rootml.serve")}


def test_client_round_trip_of_numpy_stays_light():
    """Encoding a request and decoding an answer, as the client does, loads nothing heavy."""
    code = (
        "import numpy as np\n"
        "from rootml.protocol import columns_to_inputs, decode_infer_response, encode_infer_request\n"
        "x = np.arange(6, dtype=np.float32).reshape(2, 3)\n"
        "inputs = columns_to_inputs({'x': x})\n"
        "body, length = encode_infer_request(inputs)\n"
    )
    loaded = modules_after(code)
    assert not loaded & set(CLIENT_MUST_NOT_LOAD), sorted(loaded & set(CLIENT_MUST_NOT_LOAD))


def launch(repo: Path, tmp_path: Path) -> tuple[Server, Path]:
    """`rootml serve --repo repo` through LAUNCHER: the server and where its modules will be."""
    out = tmp_path / "modules.json"
    os.environ["MODULES_OUT"] = str(out)
    try:
        return Server(repo, tmp_path / "serve.log", entry=("-c", LAUNCHER)), out
    finally:
        del os.environ["MODULES_OUT"]


def stop_and_read_modules(server: Server, out: Path, log: Path) -> set[str]:
    """SIGTERM: uvicorn shuts down and atexit writes sys.modules; the names loaded."""
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0, log.read_text()
    return set(json.loads(out.read_text()))


@pytest.fixture(scope="module")
def physics_repo(tmp_path_factory):
    specs = hzz_specs()
    repo = tmp_path_factory.mktemp("light-repo")
    model = add_model(repo, "hzz", specs, "standard", max_batch_size=4096)
    return repo, specs, model


def test_serve_process_loads_neither_torch_nor_uproot(physics_repo, tmp_path):
    repo, specs, model = physics_repo
    every = read_columns(HZZ, "events", HZZ_BRANCHES)
    columns = {name: values[:ROWS] for name, values in every.items()}
    want = run_onnx(model, reference_inputs(columns, specs.feature_names, every, "standard"))
    server, out = launch(repo, tmp_path)
    try:
        # Raw branch columns as JSON lists per entry, then as items and counts (binary).
        inputs = [
            {"name": n, "datatype": "FP32" if n != "Muon_Charge" else "INT32",
             "shape": [ROWS], "data": ak.to_list(v)}
            for n, v in columns.items()
        ]  # fmt: skip
        answer = httpx.post(
            f"{server.url}/v2/models/hzz/infer", content=orjson.dumps({"inputs": inputs})
        )
        assert answer.status_code == 200, answer.text
        scores = np.reshape(answer.json()["outputs"][0]["data"], (ROWS, 1))
        np.testing.assert_allclose(scores, want["score"], rtol=0, atol=1e-5)
        from rootml.client import Client
        from rootml.protocol import columns_to_inputs

        with Client(server.url) as client:
            scores = client.infer("hzz", columns_to_inputs(columns))["score"]
        np.testing.assert_allclose(scores, want["score"], rtol=0, atol=1e-5)
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "libtorch" not in maps and "libc10" not in maps
        assert "onnxruntime" in maps  # the map is the serving process's
        loaded = stop_and_read_modules(server, out, tmp_path / "serve.log")
    finally:
        server.stop()
    assert {"rootml.serve.physics", "onnxruntime", "fastapi"} <= loaded
    assert not loaded & set(SERVER_MUST_NOT_LOAD), sorted(loaded & set(SERVER_MUST_NOT_LOAD))


def test_plain_onnx_server_loads_no_awkward(tmp_path):
    """A repository of plain ONNX models (no Specs): the server answers, and neither awkward nor
    pyarrow (nor the transforms) is in its memory map while it serves or in sys.modules at exit."""
    model = mlp_onnx_bytes()
    add_onnx_model(tmp_path / "repo", "plain", model)
    inputs = make_inputs(8)
    body, length = encode_infer_request(inputs)
    server, out = launch(tmp_path / "repo", tmp_path)
    try:
        headers = {} if length is None else {"Inference-Header-Content-Length": str(length)}
        answer = httpx.post(f"{server.url}/v2/models/plain/infer", content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        got = decode_infer_response(
            answer.content, answer.headers.get("inference-header-content-length")
        )["score"]
        np.testing.assert_allclose(got, run_onnx(model, inputs)["score"], rtol=0, atol=1e-6)
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "onnxruntime" in maps and "libawkward" not in maps and "libarrow" not in maps
        loaded = stop_and_read_modules(server, out, tmp_path / "serve.log")
    finally:
        server.stop()
    assert {"rootml.serve.physics", "onnxruntime", "fastapi"} <= loaded
    bad = {m for m in loaded if m.split(".")[0] in PLAIN_SERVER_MUST_NOT_LOAD}
    bad |= loaded & set(PLAIN_SERVER_MUST_NOT_LOAD)
    assert not bad, sorted(bad)
