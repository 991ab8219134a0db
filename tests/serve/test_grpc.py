"""`rootml serve --grpc-port` against tritonclient.grpc (and Triton's own generated stubs): the
answers equal onnxruntime's and what the model's files say, errors carry the right gRPC code and
a message, and HTTP and gRPC share one model manager, batcher and set of statistics."""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from rootml.export.repository import add_onnx_model
from rootml.protocol import columns_to_inputs
from tests.serve._physics_model import (
    HZZ,
    HZZ_BRANCHES,
    add_model,
    hzz_specs,
    read_columns,
    reference_inputs,
    run_onnx,
)
from tests.serve.conftest import TOKEN, Server, make_inputs

MAX_BODY = 4 << 20
TIMEOUT_S = 1.5
GOOD = {"authorization": f"Bearer {TOKEN}"}
BATCHED = {"dynamic_batching": {"max_queue_delay_microseconds": 5000}}
# A batcher that waits 60 s for more rows: every request outlives the server's --timeout.
STALLED = {"dynamic_batching": {"max_queue_delay_microseconds": 60_000_000}}


@pytest.fixture(scope="module")
def models(tmp_path_factory, mlp_bytes, mlp2_bytes):
    repo = tmp_path_factory.mktemp("grpc-repo")
    for _ in range(2):  # versions 1 and 2
        add_onnx_model(repo, "mlp", mlp_bytes, {"feature_names": [f"f{i}" for i in range(6)]})
    add_onnx_model(repo, "mlp_batched", mlp_bytes, config=BATCHED)
    for name in ("stats", "control"):
        add_onnx_model(repo, name, mlp2_bytes)
    add_onnx_model(repo, "stats_batched", mlp2_bytes, config=BATCHED)
    add_onnx_model(repo, "stalled", mlp_bytes, config=STALLED)
    specs = hzz_specs()
    hzz = add_model(repo, "hzz", specs, "standard", max_batch_size=4096)
    return repo, {"mlp": mlp_bytes, "mlp2": mlp2_bytes, "hzz": hzz, "specs": specs}


@pytest.fixture(scope="module")
def server(models, token_file, tmp_path_factory):
    srv = Server(
        models[0],
        tmp_path_factory.mktemp("grpc-log") / "serve.log",
        "--token-file",
        str(token_file),
        "--max-body-bytes",
        str(MAX_BODY),
        "--timeout",
        str(TIMEOUT_S),
        grpc=True,
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with tgrpc.InferenceServerClient(server.grpc) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    """Triton's own generated stub (tritonclient.grpc.service_pb2_grpc) on a plain channel."""
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def tensors(module, inputs: dict[str, np.ndarray]) -> list:
    out = []
    for name, array in inputs.items():
        datatype = "BOOL" if array.dtype == bool else "FP32"
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def onnxruntime_scores(model: bytes, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def grpc_error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value


def test_health_and_metadata_as_the_graph_says(client, models):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "rootml"
    assert {"model_repository", "model_configuration", "statistics"} <= set(meta["extensions"])
    graph = ort.InferenceSession(models[1]["mlp"], providers=["CPUExecutionProvider"])
    types = {"tensor(float)": "FP32", "tensor(bool)": "BOOL"}
    meta = client.get_model_metadata("mlp", as_json=True)
    assert meta["name"] == "mlp" and meta["platform"] == "onnxruntime_onnx"
    for ours, theirs in (
        (meta["inputs"], graph.get_inputs()),
        (meta["outputs"], graph.get_outputs()),
    ):
        assert [t["name"] for t in ours] == [t.name for t in theirs]
        assert [t["datatype"] for t in ours] == [types[t.type] for t in theirs]
        assert [[int(d) for d in t["shape"]] for t in ours] == [[-1, *t.shape[1:]] for t in theirs]
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("mlp", "7")


def test_model_config_is_the_config_pbtxt(client, models, server):
    """The config read by Triton's own ModelConfig message from config.pbtxt; with dynamic
    batching and no preferred_batch_size, preferred_batch_size [max_batch_size] (Triton's); its
    instance_group as placed, the groups HTTP reports (test_triton_parity: as Triton's)."""
    for name in ("mlp", "mlp_batched"):
        expected = model_config_pb2.ModelConfig()
        text_format.Parse((models[0] / name / "config.pbtxt").read_text(), expected)
        if name == "mlp_batched":
            assert not expected.dynamic_batching.preferred_batch_size
            expected.dynamic_batching.preferred_batch_size.append(expected.max_batch_size)
        groups = httpx.get(f"{server.url}/v2/models/{name}/config").json()["instance_group"]
        assert groups and not expected.instance_group
        for group in groups:
            json_format.ParseDict(group, expected.instance_group.add())
        assert client.get_model_config(name).config == expected
    config = client.get_model_config("mlp_batched", as_json=True)["config"]
    assert config["dynamic_batching"]["preferred_batch_size"] == [1024]
    over_http = httpx.get(f"{server.url}/v2/models/mlp_batched/config").json()
    assert over_http["dynamic_batching"]["preferred_batch_size"] == [1024]


@pytest.mark.parametrize("rows", [1, 1024])
@pytest.mark.parametrize("model", ["mlp", "mlp_batched"])
def test_infer_raw_contents_equal_onnxruntime(client, models, rows, model):
    inputs = make_inputs(rows, seed=rows)
    answer = client.infer(model, tensors(tgrpc, inputs), request_id="r7")
    want = onnxruntime_scores(models[1]["mlp"], inputs)
    np.testing.assert_array_equal(answer.as_numpy("score"), want)
    response = answer.get_response()
    version = "2" if model == "mlp" else "1"  # the highest version by default
    assert (response.model_name, response.model_version, response.id) == (model, version, "r7")
    assert len(response.raw_output_contents) == 1 and not response.outputs[0].HasField("contents")


def test_typed_contents_through_triton_stubs(stub, models):
    """Inputs in InferTensorContents (fp32_contents, bool_contents), sent by Triton's stubs."""
    inputs = make_inputs(5, seed=3)
    request = service_pb2.ModelInferRequest(model_name="mlp", model_version="1")
    for name, array in inputs.items():
        tensor = request.inputs.add(name=name, shape=list(array.shape))
        if array.dtype == bool:
            tensor.datatype = "BOOL"
            tensor.contents.bool_contents.extend(array.ravel().tolist())
        else:
            tensor.datatype = "FP32"
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
    request.outputs.add(name="score")
    response = stub.ModelInfer(request)
    scores = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(
        response.outputs[0].shape
    )
    np.testing.assert_array_equal(scores, onnxruntime_scores(models[1]["mlp"], inputs))


def test_raw_physics_columns_equal_onnxruntime(client, models):
    """Branches as uproot reads them (jagged: items + ".counts"), preprocessed by the server."""
    every = read_columns(HZZ, "events", HZZ_BRANCHES)
    columns = {name: values[:300] for name, values in every.items()}
    sent = []
    for name, array in columns_to_inputs(columns).items():
        tensor = tgrpc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        sent.append(tensor)
    answer = client.infer("hzz", sent)
    specs = models[1]["specs"]
    inputs = reference_inputs(columns, specs.feature_names, every, "standard")
    want = run_onnx(models[1]["hzz"], inputs)["score"]
    np.testing.assert_allclose(answer.as_numpy("score"), want, rtol=0, atol=1e-5)


def test_stream_answers_each_request_and_errors_in_turn(server, models):
    inputs = make_inputs(4, seed=9)
    results, done = [], threading.Event()

    def callback(result, error):
        results.append((result, error))
        if len(results) == 2:
            done.set()

    with tgrpc.InferenceServerClient(server.grpc) as c:
        c.start_stream(callback)
        c.async_stream_infer("mlp", tensors(tgrpc, inputs), request_id="a")
        c.async_stream_infer("mlp", tensors(tgrpc, {"features": inputs["features"]}))
        assert done.wait(30)
        c.stop_stream()
    (first, no_error), (nothing, error) = results
    assert no_error is None and nothing is None
    np.testing.assert_array_equal(
        first.as_numpy("score"), onnxruntime_scores(models[1]["mlp"], inputs)
    )
    assert "missing inputs ['mask']" in error.message()


def test_bad_requests_get_codes_and_messages(client, stub, server):
    inputs = make_inputs(2)
    unknown = grpc_error(lambda: client.infer("nope", tensors(tgrpc, inputs)))
    assert unknown.status() == "StatusCode.NOT_FOUND" and "'nope'" in unknown.message()
    missing = grpc_error(
        lambda: client.infer("mlp", tensors(tgrpc, {"features": inputs["features"]}))
    )
    assert missing.status() == "StatusCode.INVALID_ARGUMENT"
    assert "missing inputs ['mask']" in missing.message()
    version = grpc_error(lambda: client.get_model_metadata("mlp", "9"))
    assert version.status() == "StatusCode.NOT_FOUND" and "'9'" in version.message()
    bad_name = grpc_error(lambda: client.get_model_config("../etc"))
    assert bad_name.status() == "StatusCode.INVALID_ARGUMENT"

    def raw_request(**fields) -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name="mlp", **fields)
        request.inputs.add(name="features", datatype="FP32", shape=[2, 6])
        request.inputs.add(name="mask", datatype="BOOL", shape=[2, 6])
        return request

    cases = {
        "raw_input_contents has 1 entries for 2 inputs": raw_request(
            raw_input_contents=[inputs["features"].tobytes()]
        ),
        "raw_input_contents[0] has 47 bytes": raw_request(
            raw_input_contents=[inputs["features"].tobytes()[:-1], inputs["mask"].tobytes()]
        ),
        "request needs at least one input": service_pb2.ModelInferRequest(model_name="mlp"),
        "unknown datatype 'FP8'": service_pb2.ModelInferRequest(
            model_name="mlp",
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name="features", datatype="FP8", shape=[1]
                )
            ],
        ),
        "needs 12 values, contents.fp32_contents has 0": raw_request(),
    }
    for message, request in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in err.value.details()
    # Over the server's --max-body-bytes: refused by gRPC itself, the server serves on.
    big = {"features": np.zeros((MAX_BODY // 20, 6), np.float32)}
    big["mask"] = np.ones_like(big["features"], bool)
    too_large = grpc_error(lambda: client.infer("mlp", tensors(tgrpc, big)))
    assert too_large.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live() and server.alive()


def test_server_deadline_is_deadline_exceeded(client):
    began = time.monotonic()
    late = grpc_error(lambda: client.infer("stalled", tensors(tgrpc, make_inputs(1))))
    assert late.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert f"deadline of {TIMEOUT_S} s exceeded" in late.message()
    assert TIMEOUT_S <= time.monotonic() - began < TIMEOUT_S + 10


def test_repository_load_unload_with_the_token(client, models):
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        refused = grpc_error(lambda h=headers: client.unload_model("control", headers=h))
        assert refused.status() == "StatusCode.UNAUTHENTICATED"
        assert "bearer token" in refused.message()
    assert client.is_model_ready("control")
    client.unload_model("control", headers=GOOD)
    assert not client.is_model_ready("control")
    index = json_format.MessageToDict(client.get_model_repository_index())["models"]
    assert {"name": "control", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    not_ready = grpc_error(lambda: client.infer("control", tensors(tgrpc, make_inputs(1))))
    assert not_ready.status() == "StatusCode.UNAVAILABLE" and "'control'" in not_ready.message()
    client.load_model("control", headers=GOOD)
    assert client.is_model_ready("control")
    inputs = make_inputs(3)
    answer = client.infer("control", tensors(tgrpc, inputs))
    np.testing.assert_array_equal(
        answer.as_numpy("score"), onnxruntime_scores(models[1]["mlp2"], inputs)
    )
    override = grpc_error(lambda: client.load_model("control", headers=GOOD, config="{}"))
    assert override.status() == "StatusCode.INVALID_ARGUMENT"
    unknown = grpc_error(lambda: client.load_model("absent", headers=GOOD))
    assert unknown.status() == "StatusCode.NOT_FOUND" and "'absent'" in unknown.message()
    ready = client.get_model_repository_index(as_json=True)["models"]
    assert all(entry.get("state") == "READY" for entry in ready if entry["name"] == "control")


def _stats_over_both(server, client, model: str) -> tuple[dict, dict]:
    over_grpc = client.get_inference_statistics(model, as_json=True)["model_stats"]
    with thttp.InferenceServerClient(server.address) as http:
        over_http = http.get_inference_statistics(model)["model_stats"]
    return over_grpc, over_http


@pytest.mark.parametrize("model", ["stats", "stats_batched"])
def test_statistics_count_every_request_of_both_protocols(server, client, model):
    """Requests sent over HTTP and gRPC, counted exactly; durations positive and growing."""
    sizes = [1, 3, 3, 8, 1]
    with thttp.InferenceServerClient(server.address) as http:
        for rows in sizes[:2]:
            http.infer(model, tensors(thttp, make_inputs(rows)))
    for rows in sizes[2:]:
        client.infer(model, tensors(tgrpc, make_inputs(rows)))
    grpc_error(lambda: client.infer(model, tensors(tgrpc, {"mask": make_inputs(1)["mask"]})))
    over_grpc, over_http = _stats_over_both(server, client, model)
    (first,) = over_grpc
    assert over_http == [_as_numbers(first)]
    stats = first["inference_stats"]
    assert first["name"] == model and first["version"] == "1"
    assert int(first["inference_count"]) == sum(sizes)
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert int(stats[key]["count"]) == len(sizes), key
        assert int(stats[key]["ns"]) > 0, key
    assert int(stats["fail"]["count"]) == 1 and int(stats["fail"]["ns"]) > 0
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in first["batch_stats"]}
    assert sum(size * count for size, count in batches.items()) == sum(sizes)
    assert sum(batches.values()) == int(first["execution_count"]) <= len(sizes)
    if model == "stats":  # unbatched: one run per request
        assert batches == {1: 2, 3: 2, 8: 1}
    assert abs(int(first["last_inference"]) / 1000 - time.time()) < 60
    # Prometheus counts the same requests, of both protocols.
    metrics = httpx.get(f"{server.url}/metrics").text
    for name, count in (("requests", len(sizes) + 1), ("failures", 1)):
        line = f'rootml_inference_{name}_total{{model="{model}",version="1"}} {count}.0'
        assert line in metrics.splitlines(), line

    client.infer(model, tensors(tgrpc, make_inputs(2)))
    (again,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        before, after = stats[key], again["inference_stats"][key]
        assert int(after["count"]) == int(before["count"]) + 1
        # A run cheap enough to run inline, on the event loop, waits in no queue.
        grew = int(after["ns"]) - int(before["ns"])
        assert grew >= 0 if key == "queue" else grew > 0, key


def _as_numbers(doc, key: str = ""):
    """A protobuf JSON document (64-bit integers as strings, zeros left out) with integers as
    numbers and zero durations, as Triton's HTTP answers carry them."""
    if isinstance(doc, dict):
        out = {k: _as_numbers(v, k) for k, v in doc.items()}
        if set(out) <= {"count", "ns"}:
            out = {"count": out.get("count", 0), "ns": out.get("ns", 0)}
        return out
    if isinstance(doc, list):
        return [_as_numbers(v, key) for v in doc]
    if isinstance(doc, str) and key not in ("name", "version"):
        return int(doc)
    return doc


def test_statistics_of_every_model_and_unknown_ones(client, server):
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    names = {(s["name"], s["version"]) for s in every}
    assert {("mlp", "1"), ("mlp", "2"), ("hzz", "1"), ("stats", "1")} <= names
    (one,) = client.get_inference_statistics("mlp", "2", as_json=True)["model_stats"]
    assert one["version"] == "2"
    unknown = grpc_error(lambda: client.get_inference_statistics("nope"))
    assert unknown.status() == "StatusCode.NOT_FOUND"
    assert httpx.get(f"{server.url}/v2/models/nope/stats").status_code == 404
