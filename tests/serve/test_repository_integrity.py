"""What the server writes and loads: a refused upload leaves the repository byte for byte as it
was (the working model stays loadable, also by a fresh load), uploads are unpacked off the event
loop, a version that cannot load is UNAVAILABLE on its own with its reason."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from rootml.serve import models as models_mod
from rootml.serve.models import ModelManager
from tests.conftest import tree_digest
from tests.serve._physics_model import add_model, hzz_specs, onnx_bytes, run_onnx
from tests.serve.conftest import AUTH, Server, mlp_onnx_bytes, tar_gz, upload


@pytest.fixture(scope="module")
def specs():
    return hzz_specs()


@pytest.fixture(scope="module")
def served(tmp_path_factory, token_file, specs):
    repo = tmp_path_factory.mktemp("integrity")
    graph = add_model(repo, "phys", specs, "standard")
    srv = Server(repo, repo.parent / "integrity.log", "--token-file", str(token_file))
    yield repo, srv, graph
    srv.stop()


def _absurd(specs) -> dict:
    data = specs.to_dict()
    data["pad"] = {**data["pad"], "Jet_Px": 10**9}
    return data


def _refused_uploads(specs, graph: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (upload body, words of the error) of uploads that must be refused."""
    wide = onnx_bytes(len(specs.feature_names) + 1)
    return {
        "config with an impossible preferred batch size": (
            tar_gz(
                {
                    "model.onnx": graph,
                    "config.pbtxt": b"dynamic_batching { preferred_batch_size: [100000000] }\n",
                }
            ),
            "preferred_batch_size",
        ),
        "config declaring other inputs": (
            tar_gz(
                {
                    "model.onnx": graph,
                    "config.pbtxt": b'input { name: "x" data_type: TYPE_FP32 dims: [3] }\n',
                }
            ),
            "is not in config.pbtxt",
        ),
        "a graph of another signature": (wide, "does not fit the model's config.pbtxt"),
        "rootml.json not JSON": (
            tar_gz({"model.onnx": graph, "rootml.json": b"{not json"}),
            "not valid JSON",
        ),
        "rootml.json with unreadable specs": (
            tar_gz({"model.onnx": graph, "rootml.json": b'{"specs": {"format": 1}}'}),
            "specs",
        ),
        "rootml.json with absurd pad lengths": (
            tar_gz(
                {"model.onnx": graph, "rootml.json": json.dumps({"specs": _absurd(specs)}).encode()}
            ),
            "pad length 1000000000",
        ),
        "rootml.json whose specs do not fit the graph": (
            tar_gz(
                {
                    "model.onnx": wide,
                    "rootml.json": json.dumps({"specs": specs.to_dict()}).encode(),
                }
            ),
            "does not fit the model",
        ),
    }


def test_refused_uploads_leave_the_repository_byte_identical(served, specs):
    repo, srv, graph = served
    before = tree_digest(repo)
    for case, (body, words) in _refused_uploads(specs, graph).items():
        response = upload(srv, "phys", body)
        assert response.status_code == 400, (case, response.text)
        assert words in response.json()["error"], (case, response.json())
        assert tree_digest(repo) == before, case
    # The working model still serves, and loads anew from the repository (as after a restart).
    assert httpx.post(f"{srv.url}/v2/repository/models/phys/load", headers=AUTH).status_code == 200
    index = httpx.post(f"{srv.url}/v2/repository/index").json()
    assert [e for e in index if e["name"] == "phys"] == [
        {"name": "phys", "version": "1", "state": "READY", "reason": ""}
    ]


def test_a_version_that_cannot_load_is_unavailable_alone(tmp_path, token_file, specs):
    repo = tmp_path / "repo"
    graph = add_model(repo, "phys", specs, "standard")
    add_model(repo, "phys", specs, "standard", seed=1)
    # Version 2's rootml.json edited by hand to ask for 1e9 columns per entry.
    path = repo / "phys" / "2" / "rootml.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "specs": _absurd(specs)}))
    srv = Server(repo, tmp_path / "log", "--token-file", str(token_file))
    try:
        rng = np.random.default_rng(1)
        inputs = {
            "features": rng.normal(size=(4, len(specs.feature_names))).astype(np.float32),
            "mask": np.ones((4, len(specs.feature_names)), dtype=bool),
        }
        doc = {
            "inputs": [
                {"name": name, "shape": [4, len(specs.feature_names)], "datatype": kind,
                 "data": inputs[name].tolist()}
                for name, kind in (("features", "FP32"), ("mask", "BOOL"))
            ]
        }  # fmt: skip
        good = httpx.post(f"{srv.url}/v2/models/phys/versions/1/infer", json=doc)
        assert good.status_code == 200, good.text
        np.testing.assert_allclose(
            good.json()["outputs"][0]["data"],
            run_onnx(graph, inputs)["score"].reshape(-1),
            rtol=1e-6,
        )
        for url in ("phys/versions/2/infer", "phys/infer"):  # the default version is 2
            bad = httpx.post(f"{srv.url}/v2/models/{url}", json=doc)
            assert bad.status_code == 503, bad.text
            assert "pad length 1000000000" in bad.json()["error"]
        index = httpx.post(f"{srv.url}/v2/repository/index").json()
        states = {e["version"]: (e["state"], e["reason"]) for e in index if e["name"] == "phys"}
        assert states["1"] == ("READY", "") and states["2"][0] == "UNAVAILABLE"
        assert "pad length" in states["2"][1]
        load = httpx.post(f"{srv.url}/v2/repository/models/phys/load", headers=AUTH)
        assert load.status_code == 400 and "version 2 failed" in load.json()["error"]
    finally:
        srv.stop()


def test_uploads_are_unpacked_and_checked_off_the_event_loop(tmp_path, monkeypatch):
    threads = []
    unpack = models_mod.read_upload

    def recording(body, max_bytes):
        threads.append(threading.current_thread())
        return unpack(body, max_bytes)

    monkeypatch.setattr(models_mod, "read_upload", recording)

    async def scenario() -> int:
        manager = ModelManager(tmp_path)
        try:
            loop_thread = threading.current_thread()
            version = await manager.upload("m", tar_gz({"model.onnx": mlp_onnx_bytes(0)}), 1 << 20)
            assert threads and all(t is not loop_thread for t in threads)
            return version
        finally:
            await manager.close()

    assert asyncio.run(scenario()) == 1
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == mlp_onnx_bytes(0)


def test_a_triton_load_with_files_is_refused_not_ignored(served):
    repo, srv, graph = served
    before = tree_digest(repo)
    client = triton.InferenceServerClient(srv.address)
    try:
        with pytest.raises(InferenceServerException, match="upload"):
            client.load_model("phys", headers=AUTH, files={"file:1/model.onnx": graph})
        client.load_model("phys", headers=AUTH)  # a plain reload is fine
    finally:
        client.close()
    assert tree_digest(repo) == before
