"""A physicist's first hour with `rootml serve`: an empty or missing repository is reported before
the banner; with --repository-poll-secs models exported while the server runs are loaded
(versions whole, never half-written), changed ones reloaded, removed ones unloaded."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from rootml.cli import main
from rootml.export.repository import add_onnx_model
from rootml.serve.models import ModelManager
from tests.serve.conftest import Server, make_inputs, mlp_onnx_bytes


def scores(model: bytes, inputs: dict) -> np.ndarray:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def test_a_missing_repository_is_an_error_before_the_banner(tmp_path, capsys):
    assert main(["serve", "--repo", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "rootml export" in err
    assert "on http://" not in err  # refused before the banner


def test_poll_loads_changes_and_unloads_removed_models(tmp_path):
    one, two = mlp_onnx_bytes(0), mlp_onnx_bytes(1)
    inputs = make_inputs(3)

    async def scenario() -> None:
        manager = ModelManager(tmp_path)
        try:
            await manager.load_all()
            assert manager.loaded() == {}
            add_onnx_model(tmp_path, "m", one, {"labels": ["b", "s"]})
            await manager.poll()
            assert manager.loaded() == {"m": [1]}
            np.testing.assert_array_equal(
                manager.get("m").run(inputs)["score"], scores(one, inputs)
            )
            await manager.poll()  # nothing changed: the same version objects keep serving
            served = manager.get("m")
            await manager.poll()
            assert manager.get("m") is served
            add_onnx_model(tmp_path, "m", two)
            await manager.poll()
            assert manager.loaded() == {"m": [1, 2]} and manager.get("m").version == 2
            assert manager.get("m").metadata is None  # version 2 has its own (no) metadata
            assert manager.get("m", 1).metadata["labels"] == ["b", "s"]
            np.testing.assert_array_equal(
                manager.get("m").run(inputs)["score"], scores(two, inputs)
            )
            shutil.rmtree(tmp_path / "m" / "2")  # a version removed
            await manager.poll()
            assert manager.loaded() == {"m": [1]}
            # A model that cannot load is reported once and tried again when it changes.
            (tmp_path / "broken" / "1").mkdir(parents=True)
            (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"\x08\x07half-written")
            await manager.poll()
            entry = next(e for e in manager.index() if e["name"] == "broken")
            assert entry["state"] == "UNAVAILABLE" and "not an ONNX model" in entry["reason"]
            (tmp_path / "broken" / "1" / "model.onnx").write_bytes(one)
            await manager.poll()
            assert manager.loaded()["broken"] == [1]
            # An unloaded model stays unloaded until it changes in the repository.
            await manager.unload("m")
            await manager.poll()
            assert "m" not in manager.loaded()
            shutil.rmtree(tmp_path / "broken")
            await manager.poll()
            assert "broken" not in manager.loaded()
            assert all(e["name"] != "broken" for e in manager.index())
        finally:
            await manager.close()

    asyncio.run(scenario())


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _infer(url: str, inputs: dict) -> tuple[str, np.ndarray]:
    doc = {
        "inputs": [
            {"name": name, "shape": list(array.shape), "datatype": kind,
             "data": array.ravel().tolist()}
            for (name, array), kind in zip(inputs.items(), ("FP32", "BOOL"))
        ]
    }  # fmt: skip
    response = httpx.post(f"{url}/v2/models/m/infer", json=doc, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    return answer["model_version"], np.asarray(answer["outputs"][0]["data"], np.float32)


def test_serve_on_an_empty_repository_with_polling(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    log = tmp_path / "serve.log"
    srv = Server(repo, log, "--repository-poll-secs", "0.2")
    try:
        text = log.read_text()
        assert "holds no model yet" in text and "every 0.2 s" in text
        assert text.index("holds no model yet") < text.index("rootml serve:")
        models = {1: mlp_onnx_bytes(0), 2: mlp_onnx_bytes(1), 3: mlp_onnx_bytes(2)}
        inputs = make_inputs(2)
        expected = {str(v): scores(m, inputs).ravel() for v, m in models.items()}
        add_onnx_model(repo, "m", models[1])
        _wait_for(lambda: httpx.get(f"{srv.url}/v2/models/m/ready").status_code == 200, "model m")
        # Versions added while clients send requests: every answer is complete and the scores
        # of the version it names.
        answers, failures, stop = [], [], threading.Event()

        def loop() -> None:
            while not stop.is_set() and not failures:
                try:
                    answers.append(_infer(srv.url, inputs))
                except Exception as err:  # any failure at all fails the test
                    failures.append(repr(err))

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            for version in (2, 3):
                add_onnx_model(repo, "m", models[version])
                _wait_for(
                    lambda v=str(version): failures or (answers and answers[-1][0] == v),
                    f"version {version}",
                )
        finally:
            stop.set()
            thread.join(timeout=60)
        assert failures == []
        for version, got in answers:
            np.testing.assert_array_equal(got, expected[version])
        assert {v for v, _ in answers} >= {"2", "3"}
        shutil.rmtree(repo / "m")
        _wait_for(lambda: httpx.get(f"{srv.url}/v2/models/m").status_code == 404, "unload")
    finally:
        srv.stop()


@pytest.mark.parametrize("poll", [False, True])
def test_banner_says_how_the_repository_is_read(tmp_path, poll):
    add_onnx_model(tmp_path, "m", mlp_onnx_bytes(0))
    log = tmp_path / "serve.log"
    srv = Server(tmp_path, log, *(["--repository-poll-secs", "5"] if poll else []))
    srv.stop()
    text = log.read_text()
    assert "holds no model yet" not in text
    assert ("polled every 5 s" if poll else "read at start") in text
