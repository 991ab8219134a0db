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

from tests.serve._physics_model import (
    HZZ,
    HZZ_BRANCHES,
    add_model,
    hzz_specs,
    read_columns,
    reference_inputs,
    run_onnx,
)
from tests.serve.conftest import Server

ROWS = 20
CLIENT_MUST_NOT_LOAD = ("torch", "fastapi", "starlette", "uproot", "onnx", "onnxruntime", "awkward")
SERVER_MUST_NOT_LOAD = ("torch", "uproot", "rootml.datasets", "rootml.predict", "rootml.client")
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
    out = tmp_path / "modules.json"
    os.environ["MODULES_OUT"] = str(out)
    try:
        server = Server(repo, tmp_path / "serve.log", entry=("-c", LAUNCHER))
    finally:
        del os.environ["MODULES_OUT"]
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
        server.process.send_signal(signal.SIGTERM)  # uvicorn shuts down; atexit writes
        assert server.process.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
    finally:
        server.stop()
    loaded = set(json.loads(out.read_text()))
    assert {"rootml.serve.physics", "onnxruntime", "fastapi"} <= loaded
    assert not loaded & set(SERVER_MUST_NOT_LOAD), sorted(loaded & set(SERVER_MUST_NOT_LOAD))
