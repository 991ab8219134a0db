"""Infer with named raw branch columns: the live server applies the model's Specs (padding, mask,
normalisation) and answers what onnxruntime answers on features built independently from uproot
reads with plain awkward and numpy."""

from __future__ import annotations

import awkward as ak
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import np_to_triton_dtype

from rootml.client import Client
from rootml.errors import ModelError, ProtocolError
from rootml.export.repository import TensorSpec, add_onnx_model
from rootml.protocol import encode_infer_request
from rootml.serve.codec import parse_infer_request
from rootml.serve.physics import (
    MAX_PADDED_VALUES,
    Preprocessing,
    RawColumns,
    columns_to_inputs,
)
from tests.serve._physics_model import (
    HZZ,
    HZZ_BRANCHES,
    add_model,
    hzz_specs,
    onnx_bytes,
    read_columns,
    reference_inputs,
    run_onnx,
    sorted_jets,
)
from tests.serve.conftest import Server

ROWS = 60  # the first entries of HZZ: several have no jet, none more than 3 muons
# model -> (normalisation in rootml.json, folded, what the server must apply)
MODELS = {
    "hzz": ("standard", False, "standard"),
    "hzz_minmax": ("minmax", False, "minmax"),
    "hzz_folded": ("standard", True, None),
    "hzz_raw": (None, False, None),
    "hzz_sorted": ("standard", False, "standard"),  # rootml.json: sort_by {"Jet": "Jet_E"}
}


@pytest.fixture(scope="module")
def specs():
    return hzz_specs()


@pytest.fixture(scope="module")
def models(tmp_path_factory, specs):
    """The repository and each model's ONNX bytes."""
    repo = tmp_path_factory.mktemp("physics-repo")
    built = {
        name: add_model(
            repo,
            name,
            specs,
            method,
            folded,
            seed=i,
            max_batch_size=4096,
            **({"sort_by": {"Jet": "Jet_E"}} if name == "hzz_sorted" else {}),
        )
        for i, (name, (method, folded, _)) in enumerate(MODELS.items())
    }
    f = len(specs.feature_names)
    add_onnx_model(repo, "plain", onnx_bytes(f), {"feature_names": specs.feature_names})
    wide = onnx_bytes(f + 1)
    add_onnx_model(repo, "too_wide", wide, {"specs": specs.to_dict(), "layout": "flat"})
    return repo, built


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    srv = Server(models[0], tmp_path_factory.mktemp("physics-log") / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def every_entry():
    return read_columns(HZZ, "events", HZZ_BRANCHES)


@pytest.fixture(scope="module")
def columns(every_entry):
    return {name: values[:ROWS] for name, values in every_entry.items()}


def expected(models, specs, name, columns, every_entry) -> np.ndarray:
    if name == "hzz_sorted":
        columns = sorted_jets(columns)
    inputs = reference_inputs(columns, specs.feature_names, every_entry, MODELS[name][2])
    return run_onnx(models[1][name], inputs)["score"]


def datatype(values) -> str:
    dtype = ak.to_numpy(ak.flatten(values, axis=None)).dtype
    return np_to_triton_dtype(dtype)


def json_body(columns: dict) -> bytes:
    """Flat branches as [B] lists, jagged ones as a list of lists per entry."""
    inputs = [
        {"name": n, "datatype": datatype(v), "shape": [len(v)], "data": ak.to_list(v)}
        for n, v in columns.items()
    ]
    return orjson.dumps({"inputs": inputs})


def post(server, model: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, timeout=30)


@pytest.mark.parametrize("model", list(MODELS))
def test_json_lists_per_entry_equal_onnxruntime(server, models, specs, columns, every_entry, model):
    assert any(len(jets) == 0 for jets in columns["Jet_Px"].tolist())
    response = post(server, model, json_body(columns))
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "score" and output["shape"] == [ROWS, 1]
    want = expected(models, specs, model, columns, every_entry)
    np.testing.assert_allclose(np.reshape(output["data"], (ROWS, 1)), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_content_and_counts(server, models, specs, columns, every_entry, binary):
    """Jagged branches as their items ("Jet_Px" [N]) and "Jet_Px.counts" [B]."""
    tensors = []
    for name, array in columns_to_inputs(columns).items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    assert {"Jet_Px.counts", "Muon_Charge.counts"} <= {t.name() for t in tensors}
    with triton.InferenceServerClient(server.address) as client:
        answer = client.infer(
            "hzz", tensors, outputs=[triton.InferRequestedOutput("score", binary_data=binary)]
        )
    want = expected(models, specs, "hzz", columns, every_entry)
    np.testing.assert_allclose(answer.as_numpy("score"), want, rtol=0, atol=1e-5)


def test_rootml_client_and_every_entry(server, models, specs, every_entry):
    """All 2421 entries in one binary request through rootml.client (max_batch_size 4096)."""
    with Client(server.url) as client:
        scores = client.infer("hzz_minmax", columns_to_inputs(every_entry))["score"]
    want = expected(models, specs, "hzz_minmax", every_entry, every_entry)
    assert scores.shape == (len(every_entry["MET_px"]), 1)
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-5)


def test_rectangular_jagged_and_truncation(server, models, specs, columns, every_entry):
    """Jagged branches as [B, K]: K items in every entry; K above the pad length is truncated."""
    regular = dict(columns)
    for name, k in (("Jet_Px", 2), ("Jet_E", 2), ("Muon_Px", 5), ("Muon_Charge", 5)):
        regular[name] = ak.to_numpy(ak.fill_none(ak.pad_none(columns[name], k, clip=True), 1))
    with Client(server.url) as client:
        scores = client.infer("hzz", {n: np.asarray(v) for n, v in regular.items()})["score"]
    as_jagged = {n: ak.Array(v) for n, v in regular.items()}
    want = expected(models, specs, "hzz", as_jagged, every_entry)
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-5)


def test_model_inputs_still_served(server, models, specs, columns, every_entry):
    inputs = reference_inputs(columns, specs.feature_names, every_entry, "standard")
    with Client(server.url) as client:
        scores = client.infer("hzz", inputs)["score"]
    np.testing.assert_allclose(scores, run_onnx(models[1]["hzz"], inputs)["score"], atol=1e-6)


def _json(columns: dict, **changes) -> bytes:
    doc = orjson.loads(json_body(columns))
    for item in doc["inputs"]:
        change = changes.get(item["name"], {})
        item.update(change if isinstance(change, dict) else {})
    doc["inputs"] = [i for i in doc["inputs"] if changes.get(i["name"]) != "drop"]
    doc["inputs"] += changes.get("extra", [])
    return orjson.dumps(doc)


def _counts(columns: dict, counts: list, datatype: str = "INT64") -> bytes:
    flat = {n: v for n, v in columns.items() if n != "Jet_Px"}
    doc = orjson.loads(json_body(flat))
    content = ak.to_list(ak.flatten(columns["Jet_Px"]))
    doc["inputs"] += [
        {"name": "Jet_Px", "datatype": "FP32", "shape": [len(content)], "data": content},
        {"name": "Jet_Px.counts", "datatype": datatype, "shape": [len(counts)], "data": counts},
    ]
    return orjson.dumps(doc)


def bad_requests(columns: dict) -> dict[str, tuple[str, bytes, str]]:
    """case -> (model, body, words the error must hold)."""
    n = len(columns["MET_px"])
    njet = ak.to_list(ak.num(columns["Jet_Px"]))
    mets = ak.to_list(columns["MET_px"])
    return {
        "missing branch": ("hzz", _json(columns, MET_py="drop"), "missing branch 'MET_py'"),
        "unknown branch": (
            "hzz",
            _json(columns, extra=[{"name": "HT", "datatype": "FP32", "shape": [n], "data": mets}]),
            "unknown input 'HT'",
        ),
        "flat branch of rank 2": (
            "hzz",
            _json(columns, MET_px={"shape": [n, 1]}),
            "branch 'MET_px' is flat",
        ),
        "entries differ": (
            "hzz",
            _json(columns, MET_py={"shape": [n - 1], "data": mets[1:]}),
            "branch 'MET_py' has",
        ),
        "jagged items without counts": (
            "hzz",
            _json(
                columns,
                Jet_Px={
                    "shape": [sum(njet)],
                    "data": ak.to_list(ak.flatten(columns["Jet_Px"])),
                },
            ),
            "branch 'Jet_Px' is jagged",
        ),
        "counts do not add up": ("hzz", _counts(columns, [*njet[:-1], njet[-1] + 1]), "add up"),
        "negative counts": (
            "hzz",
            _counts(columns, [-1, njet[0] + njet[1] + 1, *njet[2:]]),
            "negative",
        ),
        "float counts": ("hzz", _counts(columns, njet, "FP32"), "'Jet_Px.counts' must be integers"),
        "rows not lists": (
            "hzz",
            _json(columns, Jet_E={"data": [[1.0], 2.0] + [[]] * (n - 2)}),
            "input 'Jet_E': ragged data",
        ),
        "strings as a branch": (
            "hzz",
            _json(columns, MET_px={"datatype": "BYTES", "data": ["x"] * n}),
            "branch 'MET_px'",
        ),
        "raw columns to a model without Specs": (
            "plain",
            encode_infer_request(columns_to_inputs(columns), binary=False)[0],
            "unknown input 'MET_px'",
        ),
        "layout wider than the model": ("too_wide", _json(columns), "raw columns cannot feed"),
        "model inputs mixed with branches": (
            "hzz",
            _json(
                columns,
                extra=[{"name": "mask", "datatype": "BOOL", "shape": [n, 1], "data": [True] * n}],
            ),
            "unknown input 'MET_px'",
        ),
    }


def test_bad_raw_requests_400_naming_the_branch(server, columns):
    for case, (model, body, words) in bad_requests(columns).items():
        response = post(server, model, body)
        assert response.status_code == 400, (case, response.text)
        assert words in response.json()["error"], (case, response.json())
    assert server.alive()
    assert post(server, "hzz", json_body(columns)).status_code == 200


def test_more_entries_than_max_batch_size(server, every_entry):
    rows = {n: ak.concatenate([v, v]) for n, v in every_entry.items()}
    with Client(server.url) as client, pytest.raises(ProtocolError, match="max_batch_size 4096"):
        client.infer("hzz", columns_to_inputs(rows))


def test_codec_decodes_ragged_json_only_for_named_inputs():
    doc = {"inputs": [{"name": "J", "datatype": "FP32", "shape": [3], "data": [[1, 2.5], [], [3]]}]}
    (item,) = parse_infer_request(orjson.dumps(doc), ragged={"J"}).inputs
    np.testing.assert_array_equal(item.array, np.array([1, 2.5, 3], dtype=np.float32))
    np.testing.assert_array_equal(item.counts, [2, 0, 1])
    assert item.array.dtype == np.float32
    with pytest.raises(ProtocolError, match="not a regular array"):
        parse_infer_request(orjson.dumps(doc))
    doc["inputs"][0]["shape"] = [4]
    with pytest.raises(ProtocolError, match="needs shape \\[3\\]"):
        parse_infer_request(orjson.dumps(doc), ragged={"J"})


def test_columns_to_inputs_round_trip(columns):
    inputs = columns_to_inputs(columns)
    for name in ("Jet_Px", "Muon_Charge"):
        rebuilt = ak.unflatten(inputs[name], inputs[name + ".counts"])
        assert ak.to_list(rebuilt) == ak.to_list(columns[name])
    np.testing.assert_array_equal(inputs["MET_px"], ak.to_numpy(columns["MET_px"]))


def test_preprocessing_needs_specs(specs):
    with pytest.raises(ModelError, match="no Specs"):
        Preprocessing.from_metadata({"feature_names": ["a"]}, "m")
    prep = Preprocessing.from_metadata(
        {"specs": specs.to_dict(), "normalization": {"method": "minmax", "folded": True}}, "m"
    )
    assert prep.normalize is None and prep.layout == "flat"
    assert list(prep.branches()) == list(specs.branches)


def test_padded_size_of_a_request_is_bounded(specs):
    # A model taking any number of features (dim -1) with long Jet padding: a small request of
    # many entries would be padded to 700 x ~60k values; 413 instead of allocating them.
    data = specs.to_dict()
    data["pad"] = {**data["pad"], "Jet_Px": 60_000}
    prep = Preprocessing.from_metadata({"specs": data, "normalization": {}}, "long")
    shape = (-1, -1)
    raw = RawColumns(
        prep,
        [TensorSpec("features", "FP32", shape), TensorSpec("mask", "BOOL", shape)],
        [TensorSpec("score", "FP32", (-1, 1))],
    )
    assert raw.error is None and raw.row_values > 2 * 60_000
    rows = MAX_PADDED_VALUES // raw.row_values + 1
    empty = {
        name: np.zeros(rows, np.float32) if kind != "jagged" else np.zeros(0, np.float32)
        for name, kind in raw.kinds.items()
    }
    empty.update({f"{n}.counts": np.zeros(rows, np.int64) for n in raw.jagged})
    body, length = encode_infer_request(empty)
    with pytest.raises(ProtocolError, match="send fewer entries") as err:
        raw.feeds(parse_infer_request(body, length, raw.jagged))
    assert err.value.status == 413
    body, length = encode_infer_request({k: v[:2] for k, v in empty.items()})  # 2 entries
    feeds = raw.feeds(parse_infer_request(body, length, raw.jagged))
    assert feeds["features"].shape == (2, raw.row_values // 2)
