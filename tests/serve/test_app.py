"""The live server through tritonclient (the reference client) and raw HTTP for bad requests."""

from __future__ import annotations

import gzip
import time

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from rootml.errors import ProtocolError
from tests.serve.conftest import N_FEATURES, Server, make_inputs


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(mlp_bytes):
    session = ort.InferenceSession(mlp_bytes, providers=["CPUExecutionProvider"])
    return lambda inputs: session.run(None, inputs)[0]


def triton_inputs(inputs: dict[str, np.ndarray], binary: bool) -> list:
    out = []
    for name, array in inputs.items():
        tensor = triton.InferInput(
            name, list(array.shape), "BOOL" if array.dtype == bool else "FP32"
        )
        tensor.set_data_from_numpy(array, binary_data=binary)
        out.append(tensor)
    return out


def post_infer(
    server, body: bytes, headers: dict | None = None, model: str = "mlp"
) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, headers=headers or {})


def assert_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert words.lower() in message.lower(), message


def test_health_and_server_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "rootml"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])


def test_model_metadata_matches_onnx_graph(client, mlp_bytes):
    meta = client.get_model_metadata("mlp")
    session = ort.InferenceSession(mlp_bytes, providers=["CPUExecutionProvider"])
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "onnxruntime_onnx"
    assert [i["name"] for i in meta["inputs"]] == [i.name for i in session.get_inputs()]
    assert meta["inputs"][0] == {"name": "features", "datatype": "FP32", "shape": [-1, N_FEATURES]}
    assert meta["inputs"][1] == {"name": "mask", "datatype": "BOOL", "shape": [-1, N_FEATURES]}
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}]
    assert client.get_model_metadata("mlp", "1")["versions"] == ["1"]
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "7") and not client.is_model_ready("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", ["mlp", "mlp_batched", "fixed"])
def test_infer_equals_onnxruntime(client, reference, binary, model):
    inputs = make_inputs(5, seed=3)
    outputs = [triton.InferRequestedOutput("score", binary_data=binary)]
    result = client.infer(model, triton_inputs(inputs, binary), outputs=outputs, request_id="r-7")
    assert result.get_response()["id"] == "r-7"
    assert result.get_response()["model_version"] == ("2" if model == "mlp" else "1")
    np.testing.assert_array_equal(result.as_numpy("score"), reference(inputs))


def test_infer_default_outputs_version_and_compression(client, reference):
    inputs = make_inputs(4, seed=4)
    for compression in (None, "gzip", "deflate"):
        result = client.infer(
            "mlp",
            triton_inputs(inputs, True),
            model_version="1",
            request_compression_algorithm=compression,
        )
        assert result.get_response()["model_version"] == "1"
        np.testing.assert_array_equal(result.as_numpy("score"), reference(inputs))


def test_nested_json_data_and_empty_batch(server, reference):
    inputs = make_inputs(3, seed=5)
    doc = {
        "inputs": [
            {
                "name": "features",
                "datatype": "FP32",
                "shape": [3, N_FEATURES],
                "data": inputs["features"].tolist(),
            },
            {
                "name": "mask",
                "datatype": "BOOL",
                "shape": [3, N_FEATURES],
                "data": inputs["mask"].tolist(),
            },
        ]
    }
    response = post_infer(server, orjson.dumps(doc))
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    np.testing.assert_array_equal(
        np.asarray(out["data"], np.float32).reshape(out["shape"]), reference(inputs)
    )
    for item in doc["inputs"]:
        item["shape"], item["data"] = [0, N_FEATURES], []
    response = post_infer(server, orjson.dumps(doc))
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [0, 1]


def _binary_body(
    inputs: dict[str, np.ndarray], sizes: dict[str, int] | None = None
) -> tuple[bytes, int]:
    entries, blobs = [], []
    for name, array in inputs.items():
        blob = array.tobytes()
        size = (sizes or {}).get(name, len(blob))
        datatype = "BOOL" if array.dtype == bool else "FP32"
        entries.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": size},
            }
        )
        blobs.append(blob)
    header = orjson.dumps({"inputs": entries})
    return header + b"".join(blobs), len(header)


def _json_doc(**changes) -> dict:
    inputs = make_inputs(2)
    doc = {
        "inputs": [
            {
                "name": "features",
                "datatype": "FP32",
                "shape": [2, N_FEATURES],
                "data": inputs["features"].ravel().tolist(),
            },
            {
                "name": "mask",
                "datatype": "BOOL",
                "shape": [2, N_FEATURES],
                "data": inputs["mask"].ravel().tolist(),
            },
        ]
    }
    doc["inputs"][0].update(changes)
    return doc


BAD_JSON = {
    "wrong input name": (_json_doc(name="feature"), "unknown input"),
    "wrong datatype": (_json_doc(datatype="FP64"), "datatype"),
    "wrong rank": (_json_doc(shape=[2 * N_FEATURES]), "shape"),
    "wrong fixed dim": (_json_doc(shape=[3, 4], data=[0.0] * 12), "shape"),
    "data length mismatch": (_json_doc(data=[1.0] * 5), "needs 12 values"),
    "strings as FP32": (_json_doc(data=["a"] * 12), "not FP32"),
    "unknown datatype": (_json_doc(datatype="FLOAT"), "unknown datatype"),
    "no inputs": ({"inputs": []}, "inputs"),
    "unknown output": ({**_json_doc(), "outputs": [{"name": "prob"}]}, "unknown output"),
    # The id is echoed: anything but a string would come back as a Python repr.
    "id not a string": ({**_json_doc(), "id": {"run": 7}}, "'id' must be a string"),
    "data and binary_data_size": (
        _json_doc(parameters={"binary_data_size": 48}),
        "both 'data' and parameters.binary_data_size",
    ),
}


@pytest.mark.parametrize("case", BAD_JSON, ids=list(BAD_JSON))
def test_bad_json_requests(server, client, case):
    doc, words = BAD_JSON[case]
    assert_error(post_infer(server, orjson.dumps(doc)), 400, words)
    assert client.is_model_ready("mlp")


def test_bad_binary_requests(server, client):
    inputs = make_inputs(2)
    body, header = _binary_body(inputs)
    assert (
        post_infer(server, body, {"Inference-Header-Content-Length": str(header)}).status_code
        == 200
    )
    cases = [
        (body[:-5], header, "runs past the body"),  # truncated body
        (body, len(body) + 10, "outside the body"),  # header length beyond the body
        (body, "x12", "not an integer"),
        (body + b"\0\0\0\0", header, "add up to"),  # bytes left over after the tensors
        (body[: header - 1], header - 1, "not valid JSON"),
    ]
    for bad_body, bad_header, words in cases:
        assert_error(
            post_infer(server, bad_body, {"Inference-Header-Content-Length": str(bad_header)}),
            400,
            words,
        )
    # binary_data_size disagreeing with shape x itemsize
    body, header = _binary_body(
        {"features": inputs["features"][:, :5].copy(), "mask": inputs["mask"]}
    )
    body = body.replace(b'"shape":[2,5]', b'"shape":[2,6]')
    assert_error(
        post_infer(server, body, {"Inference-Header-Content-Length": str(header)}),
        400,
        "binary_data_size is 40",
    )
    assert client.is_server_live()
    result = client.infer("mlp", triton_inputs(inputs, True))
    assert result.as_numpy("score").shape == (2, 1)


def test_tritonclient_sees_the_error_message(client):
    inputs = make_inputs(2)
    bad = triton.InferInput("features", [2, 5], "FP32")
    bad.set_data_from_numpy(inputs["features"][:, :5].copy())
    with pytest.raises(InferenceServerException, match="model expects") as err:
        client.infer("mlp", [bad, triton_inputs(inputs, True)[1]])
    assert err.value.status() == "400"


def test_unknown_model_and_version(server, client):
    assert_error(post_infer(server, orjson.dumps(_json_doc()), model="nope"), 404, "unknown model")
    response = httpx.post(
        f"{server.url}/v2/models/mlp/versions/9/infer", content=orjson.dumps(_json_doc())
    )
    assert_error(response, 404, "no loaded version")
    assert_error(httpx.get(f"{server.url}/v2/models/nope"), 404, "unknown model")
    assert_error(httpx.get(f"{server.url}/v2/models/..%2F..%2Fetc"), 404, "")
    assert_error(httpx.get(f"{server.url}/v2/nothing/here"), 404, "not found")
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")


def test_batch_over_max_batch_size(server, tmp_path, mlp_bytes):
    from rootml.export.repository import add_onnx_model

    add_onnx_model(tmp_path, "small", mlp_bytes, max_batch_size=4)
    srv = Server(tmp_path, tmp_path / "log")
    try:
        inputs = make_inputs(5)
        body, header = _binary_body(inputs)
        assert_error(
            post_infer(srv, body, {"Inference-Header-Content-Length": str(header)}, model="small"),
            400,
            "max_batch_size 4",
        )
        body, header = _binary_body(make_inputs(4))
        assert (
            post_infer(
                srv, body, {"Inference-Header-Content-Length": str(header)}, model="small"
            ).status_code
            == 200
        )
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def small_server(repo, tmp_path_factory):
    srv = Server(repo, tmp_path_factory.mktemp("small") / "log", "--max-body-bytes", "4096")
    yield srv
    srv.stop()


def test_body_limit(small_server):
    big = make_inputs(200)  # 200 x 6 x (4 + 1) bytes: over 4096
    body, header = _binary_body(big)
    headers = {"Inference-Header-Content-Length": str(header)}
    assert_error(post_infer(small_server, body, headers), 413, "over the limit")
    # Compressed it is small on the wire, but not once decompressed.
    zipped = np.zeros((200, N_FEATURES), np.float32)
    body, header = _binary_body({"features": zipped, "mask": zipped.astype(bool)})
    packed = gzip.compress(body)
    assert len(packed) < 4096 < len(body)
    headers = {"Inference-Header-Content-Length": str(header), "Content-Encoding": "gzip"}
    assert_error(post_infer(small_server, packed, headers), 413, "decompresses to more")
    assert_error(
        post_infer(small_server, packed[:-20], {**headers, "Content-Encoding": "gzip"}), 400, ""
    )
    body, header = _binary_body(make_inputs(10))
    headers = {"Inference-Header-Content-Length": str(header), "Content-Encoding": "gzip"}
    assert post_infer(small_server, gzip.compress(body), headers).status_code == 200
    assert small_server.alive()


def test_tfaas_json(server, reference):
    inputs = make_inputs(1, seed=9)
    features = inputs["features"][0]
    keys = [f"f{i}" for i in range(N_FEATURES)]
    order = [3, 0, 5, 1, 4, 2]  # keys in another order than the model's feature_names
    doc = {"keys": [keys[i] for i in order], "values": features[order].tolist(), "model": "mlp"}
    response = httpx.post(f"{server.url}/json", content=orjson.dumps(doc))
    assert response.status_code == 200, response.text
    expected = reference({"features": features[None], "mask": np.ones((1, N_FEATURES), bool)})
    np.testing.assert_allclose(response.json(), expected[0], rtol=1e-6)
    doc["keys"][0] = "zz"
    assert_error(
        httpx.post(f"{server.url}/json", content=orjson.dumps(doc)),
        400,
        "miss the model's features",
    )


def _samples(server) -> dict[tuple[str, str], float]:
    """(sample name, version) -> value of model "mlp" from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            if sample.labels.get("model") == "mlp" and "le" not in sample.labels:
                out[(sample.name, sample.labels["version"])] = sample.value
    return out


def test_metrics_count_requests_failures_runs_and_rows(server, client):
    before = _samples(server)
    client.infer("mlp", triton_inputs(make_inputs(3), True), model_version="1")
    response = httpx.post(
        f"{server.url}/v2/models/mlp/versions/1/infer", content=orjson.dumps(_json_doc(name="x"))
    )
    assert response.status_code == 400
    after = _samples(server)
    expected = {
        "rootml_inference_requests_total": 2,
        "rootml_inference_failures_total": 1,
        "rootml_inference_latency_seconds_count": 2,
        "rootml_session_runs_total": 1,
        "rootml_batch_size_count": 1,
        "rootml_batch_size_sum": 3,
        "rootml_queue_time_seconds_count": 1,
    }
    for name, delta in expected.items():
        assert after[(name, "1")] - before.get((name, "1"), 0.0) == delta, name


def test_openapi_config_index(server, client):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert (
        "/v2/models/{model_name}/infer" in spec["paths"] and "/v2/repository/index" in spec["paths"]
    )
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 1024 and config["input"][0]["dims"] == [N_FEATURES]
    index = client.get_model_repository_index()
    assert {"name": "mlp", "version": "2", "state": "READY", "reason": ""} in index


def test_infer_fast_path_answers_unexpected_errors_in_the_protocol_form(repo, monkeypatch):
    """Infer requests skip FastAPI's middleware: an unexpected failure is still a 500 {error}."""
    from starlette.testclient import TestClient

    from rootml.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(repo=str(repo)))
    with TestClient(app, raise_server_exceptions=False) as client:

        def broken(*args, **kwargs):
            raise RuntimeError("bug")

        monkeypatch.setattr("rootml.serve.endpoints.encode_infer_response", broken)
        for path in ("/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer"):
            response = client.post(path, content=orjson.dumps(_json_doc()))
            assert response.status_code == 500
            assert response.json() == {"error": "internal error: RuntimeError"}
        response = client.post("/v2/models/nope/infer", content=orjson.dumps(_json_doc()))
        assert response.status_code == 404 and "nope" in response.json()["error"]


def test_cheap_runs_go_inline_and_slow_ones_back_to_the_run_threads(repo, reference):
    """A run measured under inline_run_us runs on the event loop; one measured slower goes back
    to the run threads until its moving average is cheap again. What counts is the run's CPU
    time, not time spent waiting (for a core, the GIL; here asleep). Answers are equal
    throughout."""
    import threading

    from starlette.testclient import TestClient

    from rootml.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(repo=str(repo), run_slots=1, inline_run_us=1000))
    doc = _json_doc()
    expected = reference(make_inputs(2))
    with TestClient(app) as client:
        served = app.state.manager.get("mlp")
        real_run, threads, busy, asleep = served.run, [], [0.0], [0.0]

        def run(feeds):
            threads.append(threading.current_thread().name)
            started = time.thread_time()
            while time.thread_time() - started < busy[0]:
                pass  # a run that costs `busy` s of CPU
            time.sleep(asleep[0])
            return real_run(feeds)

        served.run = run

        def infer() -> None:
            answer = client.post("/v2/models/mlp/infer", content=orjson.dumps(doc))
            assert answer.status_code == 200, answer.text
            score = np.asarray(answer.json()["outputs"][0]["data"], np.float32)
            np.testing.assert_allclose(score, expected.ravel(), rtol=1e-6)

        infer()
        assert threads[-1].startswith("rootml-run")  # not measured yet
        for _ in range(3):
            infer()
        assert not threads[-1].startswith("rootml-run")  # measured cheap: on the event loop
        asleep[0] = 0.01
        for _ in range(3):
            infer()  # 10 ms waiting, no CPU: still cheap
        assert not any(t.startswith("rootml-run") for t in threads[-3:])
        asleep[0], busy[0] = 0.0, 0.01
        infer()  # measured at 10 ms of CPU: the moving average is now over 1 ms
        infer()
        assert threads[-1].startswith("rootml-run")
        busy[0] = 0.0
        for _ in range(12):
            infer()
        assert not threads[-1].startswith("rootml-run")


def test_deadline_and_full_queue_are_503(repo):
    """In process, with a run slowed down on purpose: the deadline and the bounded queue."""
    import asyncio

    from starlette.testclient import TestClient

    from rootml.serve.app import ServeSettings, create_app

    # No run inline on the event loop: the deadline and the queue bound are the run threads'.
    settings = ServeSettings(
        repo=str(repo), request_timeout_s=0.2, max_queue=0, run_slots=1, inline_run_us=0
    )
    app = create_app(settings)
    body = orjson.dumps(_json_doc())
    with TestClient(app) as client:
        manager = app.state.manager
        assert client.post("/v2/models/fixed/infer", content=body).status_code == 200
        served = manager.get("fixed")
        real_run = served.run
        served.run = lambda feeds: (time.sleep(0.5), real_run(feeds))[1]
        assert_error(client.post("/v2/models/fixed/infer", content=body), 503, "deadline")

        async def two_at_once():
            feeds = {
                i["name"]: np.asarray(
                    i["data"], np.float32 if i["datatype"] == "FP32" else bool
                ).reshape(i["shape"])
                for i in _json_doc()["inputs"]
            }
            return await asyncio.gather(
                manager.infer(served, feeds), manager.infer(served, feeds), return_exceptions=True
            )

        results = client.portal.call(two_at_once)
        assert isinstance(results[0], dict)
        assert isinstance(results[1], ProtocolError) and results[1].status == 503
        served.run = real_run
        assert client.post("/v2/models/fixed/infer", content=body).status_code == 200
