"""Limits not covered elsewhere in tests/serve: the queue bound and the deadline as set by
`rootml serve --max-queue/--timeout` under real concurrency, tokens compared in constant time,
a large body decoded without holding up other requests, unexpected errors and wrong methods
answered in the protocol's form. (Body and decompressed-size limits, the in-process deadline
and queue, upload refusals and external data are in test_app.py, test_models.py, test_upload.py.)
"""

from __future__ import annotations

import hmac
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper

from rootml.export.repository import add_onnx_model
from rootml.protocol import encode_infer_request
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


def test_queue_bound_and_deadline_from_the_command_line(tmp_path, results):
    add_onnx_model(tmp_path / "repo", "slow", slow_onnx_bytes(), max_batch_size=0)
    # Two runs in flight (one per core), none waiting; a request may take 0.6 s.
    srv = Server(tmp_path / "repo", tmp_path / "log", "--max-queue", "0", "--timeout", "0.6")
    url = f"{srv.url}/v2/models/slow/infer"
    try:
        body, headers = _features_body(8000)  # ~0.13 s a run
        barrier = threading.Barrier(12)

        def one(_):
            barrier.wait(timeout=10)
            return httpx.post(url, content=body, headers=headers, timeout=30)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(one, range(12)))
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 503}, [a.text for a in answers]
        assert statuses.count(200) >= 2
        overflow = [a.json()["error"] for a in answers if a.status_code == 503]
        assert any("too many requests waiting" in e for e in overflow), overflow

        body, headers = _features_body(150_000)  # ~2.5 s a run
        began = time.monotonic()
        late = httpx.post(url, content=body, headers=headers, timeout=30)
        assert late.status_code == 503 and "deadline of 0.6 s" in late.json()["error"]
        assert time.monotonic() - began < 2.0  # answered at the deadline, not after the run
        body, headers = _features_body(10)
        assert httpx.post(url, content=body, headers=headers, timeout=30).status_code == 200
    finally:
        srv.stop()
    results.update(
        kind="fault",
        what="overload: 12 concurrent slow requests with --max-queue 0; one run over --timeout",
        injected=2,
        survived=2,
        refused_503=len(overflow) + 1,
        answered_200=statuses.count(200),
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
    thread.start()
    worst, checks = 0.0, 0
    with httpx.Client(base_url=server.url, timeout=30) as http:
        while thread.is_alive():
            began = time.perf_counter()
            assert http.get("/v2/health/ready").status_code == 200
            worst, checks = max(worst, time.perf_counter() - began), checks + 1
            time.sleep(0.02)
    thread.join()
    assert answer["response"].status_code == 400
    assert "BYTES" in answer["response"].json()["error"]
    assert checks >= 5 and worst < 1.0, (checks, worst)


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
