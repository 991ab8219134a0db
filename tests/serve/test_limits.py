"""Limits not covered elsewhere in tests/serve: the queue bound and the deadline as set by
`rootml serve --max-queue/--timeout` under real concurrency (ordered by what the server reports,
not by timing, so a loaded machine gives the same answers), tokens compared in constant time,
a large body decoded without holding up other requests, unexpected errors and wrong methods
answered in the protocol's form. (Body and decompressed-size limits, the in-process deadline
and queue, upload refusals and external data are in test_app.py, test_models.py, test_upload.py.)
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from rootml.export.repository import add_onnx_model
from rootml.protocol import decode_infer_response, encode_infer_request
from tests.serve.conftest import N_FEATURES, TOKEN, Server


def slow_onnx_bytes(width: int = 512, layers: int = 4) -> bytes:
    """features FP32 [-1, F] -> score FP32 [-1, 1] through `layers` (width x width) MatMuls:
    about 16 us per row on one core, so a run's length is set by the number of rows."""
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(N_FEATURES, width)) / 3]
    weights += [rng.normal(size=(width, width)) / width**0.5 for _ in range(layers)]
    nodes = [
        helper.make_node("MatMul", ["features" if k == 0 else f"h{k - 1}", f"w{k}"], [f"h{k}"])
        for k in range(len(weights))
    ]
    nodes.append(
        helper.make_node("ReduceMean", [f"h{len(weights) - 1}"], ["score"], axes=[1], keepdims=1)
    )
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, N_FEATURES])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(w.astype(np.float32), f"w{k}") for k, w in enumerate(weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _features_body(rows: int) -> tuple[bytes, dict[str, str]]:
    features = np.random.default_rng(rows).normal(size=(rows, N_FEATURES)).astype(np.float32)
    body, length = encode_infer_request({"features": features})
    return body, {"Inference-Header-Content-Length": str(length)}


LONG_ROWS = 150_000  # ~2.5 s a run on one core of the 2-core test machine, when idle


def one_core_server(tmp_path, *args: str) -> Server:
    """`rootml serve --repo tmp_path/repo` (holding `slow`) pinned to one core: one run in flight
    (the server runs as many as it has cores) on one onnxruntime thread, on any machine. Set on
    this thread while the server starts; the child process inherits it."""
    add_onnx_model(tmp_path / "repo", "slow", slow_onnx_bytes(), max_batch_size=0)
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(own)})
    try:
        return Server(tmp_path / "repo", tmp_path / "log", *args)
    finally:
        os.sched_setaffinity(0, own)


def _runs_started(srv: Server) -> float:
    text = httpx.get(f"{srv.url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rootml_session_runs_total" and sample.labels.get("model") == "slow"
    )


def _post_in_background(url: str, rows: int) -> tuple[threading.Thread, dict]:
    answer: dict = {}
    body, headers = _features_body(rows)

    def post():
        began = time.monotonic()
        answer["response"] = httpx.post(url, content=body, headers=headers, timeout=120)
        answer["seconds"] = time.monotonic() - began

    thread = threading.Thread(target=post)
    thread.start()
    return thread, answer


def _until_answered(url: str, seconds: float = 120) -> int:
    """Small requests until one is answered 200 (the run slot is free again); how many were not."""
    body, headers = _features_body(10)
    refused, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        if httpx.post(url, content=body, headers=headers, timeout=30).status_code == 200:
            return refused
        refused += 1
        time.sleep(0.1)
    raise AssertionError(f"the server did not answer 200 again within {seconds} s")


def test_queue_bound_from_the_command_line(tmp_path, results):
    """--max-queue 0 with one run slot: while a long run holds the slot (seen started in
    /metrics, so the order does not depend on the machine's speed or load), 11 concurrent
    requests are refused with 503; the long one is answered, then the slot serves again."""
    srv = one_core_server(tmp_path, "--max-queue", "0")
    url = f"{srv.url}/v2/models/slow/infer"
    try:
        thread, long = _post_in_background(url, LONG_ROWS)
        deadline = time.monotonic() + 60
        while _runs_started(srv) < 1:
            assert time.monotonic() < deadline and thread.is_alive(), "the long run never started"
            time.sleep(0.02)
        body, headers = _features_body(10)
        barrier = threading.Barrier(11)

        def one(_):
            barrier.wait(timeout=30)
            return httpx.post(url, content=body, headers=headers, timeout=30)

        with ThreadPoolExecutor(11) as pool:
            answers = list(pool.map(one, range(11)))
        still_running = thread.is_alive()
        thread.join()
        assert still_running, "the long run ended before the other requests: make it longer"
        assert {a.status_code for a in answers} == {503}, [a.text for a in answers]
        assert all("too many requests waiting" in a.json()["error"] for a in answers)
        assert long["response"].status_code == 200, long["response"].text
        scores = decode_infer_response(
            long["response"].content, long["response"].headers["inference-header-content-length"]
        )["score"]
        assert scores.shape == (LONG_ROWS, 1)
        features = np.random.default_rng(LONG_ROWS).normal(size=(100, N_FEATURES))  # its first rows
        session = onnxruntime.InferenceSession(slow_onnx_bytes())
        expected = session.run(None, {"features": features.astype(np.float32)})[0]
        np.testing.assert_allclose(scores[:100], expected, rtol=1e-5, atol=1e-6)
        retried = _until_answered(url)
    finally:
        srv.stop()
    results.update(
        kind="fault",
        what="overload: 11 concurrent requests while a long run holds the one slot, --max-queue 0",
        injected=1,
        survived=1,
        refused_503=len(answers) + retried,
        answered_200=2,
    )


def test_deadline_from_the_command_line(tmp_path, results):
    """--timeout 0.3: a run longer than that is answered 503 at the deadline, while the run goes
    on: a request right after it still finds the one run slot busy (its own deadline passes
    while it waits), so the first answer came before the run ended, however slow the machine."""
    srv = one_core_server(tmp_path, "--timeout", "0.3")
    url = f"{srv.url}/v2/models/slow/infer"
    try:
        thread, long = _post_in_background(url, LONG_ROWS)
        thread.join()
        late = long["response"]
        assert late.status_code == 503 and "deadline of 0.3 s" in late.json()["error"], late.text
        assert long["seconds"] >= 0.3
        body, headers = _features_body(10)
        behind = httpx.post(url, content=body, headers=headers, timeout=30)
        assert behind.status_code == 503 and "deadline of 0.3 s" in behind.json()["error"]
        retried = _until_answered(url)
    finally:
        srv.stop()
    results.update(
        kind="fault",
        what="a run longer than --timeout 0.3: answered 503 at the deadline, the run left to end",
        injected=1,
        survived=1,
        refused_503=2 + retried,
        answered_200=1,
    )


def test_wrong_tokens_of_any_length_get_the_same_answer(server):
    url = f"{server.url}/v2/repository/models/mlp/unload"
    same_length = "x" * len(TOKEN)
    answers = [
        httpx.post(url, headers={"Authorization": f"Bearer {token}"})
        for token in (same_length, TOKEN[:-1] + "?", "short", TOKEN * 4)
    ]
    assert {a.status_code for a in answers} == {401}
    assert len({a.text for a in answers}) == 1
    assert httpx.get(f"{server.url}/v2/models/mlp/ready").status_code == 200


def test_token_is_compared_with_compare_digest(repo, monkeypatch):
    """The comparison goes through hmac.compare_digest (constant time), never ==."""
    from starlette.testclient import TestClient

    from rootml.serve.app import ServeSettings, create_app

    calls = []
    real = hmac.compare_digest

    def spy(given, expected):
        calls.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with TestClient(create_app(ServeSettings(repo=str(repo), token=TOKEN))) as client:
        wrong = client.post(
            "/v2/repository/models/nope/load", headers={"Authorization": "Bearer " + "y" * 22}
        )
        right = client.post(
            "/v2/repository/models/nope/load", headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert wrong.status_code == 401 and right.status_code == 404
    assert calls == [(b"y" * 22, TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_a_large_body_being_decoded_does_not_hold_up_other_requests(server):
    """8 M BYTES elements (32 MiB) take seconds to decode: the health check still answers."""
    count = 8 << 20
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "BYTES",
                    "shape": [count],
                    "parameters": {"binary_data_size": 4 * count},
                }
            ]
        }
    )
    answer = {}

    def big():
        answer["response"] = httpx.post(
            f"{server.url}/v2/models/mlp/infer",
            content=header + bytes(4 * count),
            headers={"Inference-Header-Content-Length": str(len(header))},
            timeout=60,
        )

    thread = threading.Thread(target=big)
    start = time.perf_counter()
    thread.start()
    worst, checks = 0.0, 0
    with httpx.Client(base_url=server.url, timeout=30) as http:
        while thread.is_alive():
            began = time.perf_counter()
            assert http.get("/v2/health/ready").status_code == 200
            worst, checks = max(worst, time.perf_counter() - began), checks + 1
            time.sleep(0.02)
    thread.join()
    took = time.perf_counter() - start
    assert answer["response"].status_code == 400
    assert "BYTES" in answer["response"].json()["error"]
    # A check waiting for the decode would take most of the big request's time; compared with
    # that time, not with a fixed bound, so a loaded (slower) machine changes nothing.
    assert checks >= 5 and worst < took / 3, (checks, worst, took)


def test_unexpected_errors_and_wrong_methods_answer_in_the_protocol_form(repo, monkeypatch):
    from starlette.testclient import TestClient

    from rootml.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(repo=str(repo)))
    with TestClient(app, raise_server_exceptions=False) as client:

        def broken(ready_only=False):
            raise RuntimeError("bug")

        monkeypatch.setattr(app.state.manager, "index", broken)
        response = client.post("/v2/repository/index")
        assert response.status_code == 500
        assert response.json() == {"error": "internal error: RuntimeError"}
        response = client.delete("/v2/models/mlp/infer")
        assert response.status_code == 405 and response.json() == {"error": "Method Not Allowed"}
        assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("status", [200, 503])
def test_readiness_answers_as_the_schema_says(repo, status):
    """/v2/health/ready is {"ready": bool}, 503 while models load: the schema documents both."""
    from starlette.testclient import TestClient

    from rootml.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(repo=str(repo)))
    documented = app.openapi()["paths"]["/v2/health/ready"]["get"]["responses"]
    for code in ("200", "503"):
        schema = documented[code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ServerReady"}
    if status == 200:
        with TestClient(app) as client:
            response = client.get("/v2/health/ready")
    else:
        response = TestClient(app).get("/v2/health/ready")  # lifespan not run: nothing loaded
    assert response.status_code == status and response.json() == {"ready": status == 200}
