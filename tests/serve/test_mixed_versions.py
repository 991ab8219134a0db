"""A repository with mixed exports: every version scores as its own run does.

Model "m": version 1 = run A exported plainly (standard normalisation done by the server),
2 = run B (minmax) with --fold-normalization, 3 = `rootml export --onnx m/1/model.onnx` (run A's
graph again, with the rootml.json beside it), 4 = an upload of version 2's folder. The reference
for each version: onnxruntime on its model.onnx, fed inputs made with awkward/numpy from uproot
reads and that version's own rootml.json Specs. Checked through `rootml predict` (a local version
folder, the model folder, and via the server) and the server's infer of raw branch columns
with tritonclient.http (default version and /versions/N).
"""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
import uproot

from rootml.cli import main
from rootml.client import Client
from rootml.datasets import fit_specs
from tests.export._runs import BRANCHES, MASKED_MODEL, make_run
from tests.serve._physics_model import HZZ, read_columns, reference_inputs, specs_statistics
from tests.serve.conftest import TOKEN, Server, tar_gz

INFER_ROWS = 300
ATOL = 1e-5  # rootml normalises in float32, the reference in float64
DEFAULT = 4


def run_graph(model: bytes, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(["score"], {i.name: inputs[i.name] for i in session.get_inputs()})[0]


def reference_scores(version: Path, columns: dict, metadata: dict | None = None) -> np.ndarray:
    """onnxruntime on `version`/model.onnx fed as `metadata` (default: the version's own
    rootml.json) says: its Specs' statistics, unless the normalisation is folded."""
    metadata = metadata or json.loads((version / "rootml.json").read_text())
    method = metadata["normalization"]["method"]
    folded = metadata["normalization"]["folded"]
    stats = specs_statistics(metadata["specs"], method) if method else None
    inputs = reference_inputs(
        columns, metadata["feature_names"], None, None if folded else method, stats
    )
    return run_graph((version / "model.onnx").read_bytes(), inputs)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, token_file):
    base = tmp_path_factory.mktemp("mixed")
    specs = fit_specs(str(HZZ), branches=BRANCHES, max_len=3)
    make_run(base / "a", MASKED_MODEL, specs, seed=0)
    make_run(base / "b", MASKED_MODEL, specs, seed=1, normalize="minmax")
    repo = base / "models"
    named = ["--name", "m", "--repo", str(repo)]
    assert main(["export", str(base / "a"), *named]) == 0
    assert main(["export", str(base / "b"), *named, "--fold-normalization"]) == 0
    assert main(["export", "--onnx", str(repo / "m" / "1" / "model.onnx"), *named]) == 0
    server = Server(repo, base / "serve.log", "--token-file", str(token_file))
    try:
        v2 = repo / "m" / "2"
        folder = {
            "m/config.pbtxt": (repo / "m" / "config.pbtxt").read_bytes(),
            "m/2/model.onnx": (v2 / "model.onnx").read_bytes(),
            "m/2/rootml.json": (v2 / "rootml.json").read_bytes(),
        }
        with Client(server.url, token=TOKEN) as client:
            assert client.upload("m", tar_gz(folder)) == DEFAULT
        columns = read_columns(HZZ, "events", BRANCHES)
        expected = {v: reference_scores(repo / "m" / str(v), columns) for v in range(1, 5)}
        yield repo, server, columns, expected
    finally:
        server.stop()


def test_the_versions_differ_and_the_reference_tells_them_apart(mixed):
    repo, _, columns, expected = mixed
    assert np.ptp(expected[1][:, 0]) > 1e-3 and np.ptp(expected[2][:, 0]) > 1e-3
    assert np.abs(expected[1] - expected[2]).max() > 1e-2
    np.testing.assert_array_equal(expected[3], expected[1])
    np.testing.assert_array_equal(expected[4], expected[2])
    # Version 3's graph fed with version 2's preprocessing (what a model-level rootml.json of
    # the last export did) scores otherwise: a wrong preprocessing cannot pass these tests.
    wrong = json.loads((repo / "m" / "2" / "rootml.json").read_text())
    assert np.abs(reference_scores(repo / "m" / "3", columns, wrong) - expected[3]).max() > 1e-2


def _friend_scores(path: Path) -> np.ndarray:
    return uproot.open(path)["events"]["score"].array(library="np")


@pytest.mark.parametrize("version", [1, 2, 3, 4, None])
def test_rootml_predict_with_a_local_model(mixed, tmp_path, version):
    repo, _, _, expected = mixed
    model = repo / "m" / str(version) if version else repo / "m"
    out = tmp_path / "scores.root"
    argv = ["predict", "--model", str(model), "--files", str(HZZ), "--out", str(out)]
    assert main(argv) == 0
    np.testing.assert_allclose(_friend_scores(out), expected[version or DEFAULT], atol=ATOL)


@pytest.mark.parametrize("version", [1, 2, 3, 4, None])
def test_rootml_predict_through_the_server(mixed, tmp_path, version):
    repo, server, _, expected = mixed
    url = f"{server.url}/v2/models/m/versions/{version}" if version else f"{server.url}/m"
    out = tmp_path / "scores.root"
    assert main(["predict", "--model", url, "--files", str(HZZ), "--out", str(out)]) == 0
    np.testing.assert_allclose(_friend_scores(out), expected[version or DEFAULT], atol=ATOL)


def _raw_inputs(columns: dict, rows: int) -> list:
    """The branches of the first `rows` entries as tritonclient inputs: flat [B], jagged as
    items [N] and "<branch>.counts" [B] (binary tensors, tritonclient's default)."""
    inputs = []
    for name in BRANCHES:
        values = columns[name][:rows]
        arrays = (
            {name: ak.to_numpy(values)}
            if values.ndim == 1
            else {
                name: ak.to_numpy(ak.flatten(values)),
                f"{name}.counts": ak.to_numpy(ak.num(values)).astype(np.int64),
            }
        )
        for key, array in arrays.items():
            tensor = triton.InferInput(
                key, list(array.shape), "INT64" if key.endswith(".counts") else "FP32"
            )
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("version", [1, 2, 3, 4, None])
def test_server_infer_of_raw_branches(mixed, version):
    _, server, columns, expected = mixed
    client = triton.InferenceServerClient(server.address)
    try:
        result = client.infer(
            "m",
            _raw_inputs(columns, INFER_ROWS),
            model_version=str(version or ""),
            outputs=[triton.InferRequestedOutput("score")],
        )
    finally:
        client.close()
    assert result.get_response()["model_version"] == str(version or DEFAULT)
    np.testing.assert_allclose(
        result.as_numpy("score"), expected[version or DEFAULT][:INFER_ROWS], atol=ATOL
    )
