"""The server's parts without HTTP: Endpoints called as Python, the exception table, the error
meanings a client gets back, and the infer fast path as a plain ASGI app."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from rootml.errors import (
    BadRequest,
    BodyTooLarge,
    DeadlineExceeded,
    Forbidden,
    ModelError,
    ModelNotFound,
    ModelNotReady,
    NotFound,
    Overloaded,
    ProtocolError,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    error_for_status,
)
from rootml.protocol import decode_infer_response, encode_infer_request
from rootml.serve.endpoints import Endpoints
from rootml.serve.errors import answer
from rootml.serve.fastpath import InferFastPath
from rootml.serve.settings import ServeSettings
from tests.serve.conftest import N_FEATURES, TOKEN, make_inputs


@pytest.fixture
def endpoints(repo):
    """Endpoints on the shared test repository, models loaded, on an event loop of its own."""
    loop = asyncio.new_event_loop()
    made = Endpoints(ServeSettings(repo=str(repo), token=TOKEN), "test")
    loop.run_until_complete(made.start())
    made.call = loop.run_until_complete
    yield made
    loop.run_until_complete(made.stop())
    loop.close()


def test_metadata_is_the_graph_signature(endpoints, mlp_bytes):
    session = ort.InferenceSession(mlp_bytes, providers=["CPUExecutionProvider"])
    meta = endpoints.call(endpoints.model_metadata("mlp"))
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "onnxruntime_onnx"
    assert [t["name"] for t in meta["inputs"]] == [i.name for i in session.get_inputs()]
    assert [t["name"] for t in meta["outputs"]] == [o.name for o in session.get_outputs()]
    assert meta["inputs"][0] == {"name": "features", "datatype": "FP32", "shape": [-1, N_FEATURES]}
    assert endpoints.call(endpoints.model_metadata("mlp", "1"))["versions"] == ["1"]
    assert endpoints.call(endpoints.model_ready("mlp", "2")) == {"name": "mlp", "ready": True}
    assert endpoints.ready


@pytest.mark.parametrize("binary", [True, False])
def test_infer_without_http_equals_onnxruntime(endpoints, mlp_bytes, binary):
    inputs = make_inputs(5, seed=3)
    body, length = encode_infer_request(inputs, binary=binary)
    content, header_length = endpoints.call(
        endpoints.infer("mlp", None, body, None if length is None else str(length))
    )
    assert (header_length is None) == (not binary)
    got = decode_infer_response(content, header_length)["score"]
    session = ort.InferenceSession(mlp_bytes, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(["score"], inputs)[0], rtol=1e-6)


def test_tfaas_without_http(endpoints, mlp_bytes):
    rows = np.random.default_rng(1).normal(size=(2, N_FEATURES))
    keys = [f"f{i}" for i in range(N_FEATURES)]
    doc = {"keys": keys[::-1], "values": rows[:, ::-1].tolist(), "model": "mlp"}
    got = endpoints.call(endpoints.tfaas(orjson.dumps(doc)))
    session = ort.InferenceSession(mlp_bytes, providers=["CPUExecutionProvider"])
    feeds = {"features": rows.astype(np.float32), "mask": np.ones(rows.shape, bool)}
    np.testing.assert_allclose(got, session.run(["score"], feeds)[0], rtol=1e-6)


def test_endpoints_raise_meanings_not_statuses(endpoints):
    with pytest.raises(ModelNotFound, match="'nope'"):
        endpoints.call(endpoints.model_metadata("nope"))
    with pytest.raises(ModelNotFound, match="no loaded version '7'"):
        endpoints.call(endpoints.model_ready("mlp", "7"))
    with pytest.raises(NotFound, match="no rootml.json"):
        endpoints.call(endpoints.model_rootml("fixed"))
    with pytest.raises(BadRequest, match="not valid JSON"):
        endpoints.call(endpoints.index(b"{"))
    with pytest.raises(BadRequest, match="datatype"):
        body = orjson.dumps({"inputs": [{"name": "features", "datatype": "X", "shape": [1]}]})
        endpoints.call(endpoints.infer("mlp", None, body))
    with pytest.raises(Unauthorized):
        endpoints.authorize("Bearer " + "x" * len(TOKEN))
    with pytest.raises(Unauthorized):
        endpoints.authorize(None)
    endpoints.authorize(f"Bearer {TOKEN}")
    endpoints.settings.token = None
    with pytest.raises(Forbidden, match="--token-file"):
        endpoints.authorize(f"Bearer {TOKEN}")


def test_repository_operations_without_http(endpoints):
    index = endpoints.call(endpoints.index(b""))
    assert {"name": "mlp", "version": "2", "state": "READY", "reason": ""} in index
    assert endpoints.call(endpoints.unload("fixed")) == {}
    with pytest.raises(ModelNotReady, match="unloaded"):
        endpoints.call(endpoints.model_metadata("fixed"))
    assert endpoints.call(endpoints.load("fixed", b"{}")) == {}
    assert endpoints.call(endpoints.model_ready("fixed"))["ready"]
    with pytest.raises(BadRequest, match="override is not supported"):
        endpoints.call(endpoints.load("fixed", b'{"parameters": {"config": "{}"}}'))


@pytest.mark.parametrize(
    "err, status",
    [
        (BadRequest("x"), 400),
        (Unauthorized("x"), 401),
        (Forbidden("x"), 403),
        (ModelNotFound("x"), 404),
        (RequestTimeout("x"), 408),
        (BodyTooLarge("x"), 413),
        (ModelNotReady("x"), 503),
        (Overloaded("x"), 503),
        (DeadlineExceeded("x"), 503),
        (ProtocolError("x", 502), 502),
        (ModelError("x"), 400),
    ],
)
def test_one_table_answers_each_meaning(err, status):
    assert answer(err) == (status, "x")


def test_unexpected_errors_answer_500_without_their_text():
    assert answer(KeyError("secret")) == (500, "internal error: KeyError")


def test_a_client_gets_the_meaning_of_a_status_back():
    for status, cls in [(404, NotFound), (503, Unavailable), (413, BodyTooLarge)]:
        err = error_for_status(status, "m")
        assert type(err) is cls and err.status == status and str(err) == "m"
    err = error_for_status(500, "internal error: KeyError")
    assert type(err) is ProtocolError and err.status == 500
    again = pickle.loads(pickle.dumps(ModelNotFound("unknown model 'x'")))
    assert (
        type(again) is ModelNotFound and again.status == 404 and str(again) == "unknown model 'x'"
    )


def asgi_call(app, method: str, path: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    """One HTTP request through an ASGI app: (status, headers, body)."""
    sent: list[dict] = []
    received = [{"type": "http.request", "body": body, "more_body": False}]
    scope = {"type": "http", "method": method, "path": path, "headers": [], "root_path": ""}

    async def receive():
        return received.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    headers = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def test_fast_path_takes_infer_posts_only():
    calls = []

    async def inner(scope, receive, send):
        calls.append(("app", scope["method"], scope["path"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def infer(headers, receive, model, version):
        calls.append(("infer", model, version))
        if model == "missing":
            raise ModelNotFound(f"unknown model {model!r}")
        if model == "broken":
            raise RuntimeError("bug")
        return b'{"outputs": []}', None

    app = InferFastPath(inner, infer)
    status, headers, body = asgi_call(app, "POST", "/v2/models/m/versions/3/infer")
    assert (status, body) == (200, b'{"outputs": []}')
    assert headers == {"content-type": "application/json", "content-length": "15"}
    assert asgi_call(app, "POST", "/v2/models/missing/infer")[::2] == (
        404,
        b'{"error":"unknown model \'missing\'"}',
    )
    assert asgi_call(app, "POST", "/v2/models/broken/infer")[::2] == (
        500,
        b'{"error":"internal error: RuntimeError"}',
    )
    assert asgi_call(app, "GET", "/v2/models/m/infer")[0] == 204  # to the app: its 405
    assert asgi_call(app, "POST", "/v2/models/m/infer/x")[0] == 204
    assert calls == [
        ("infer", "m", "3"),
        ("infer", "missing", None),
        ("infer", "broken", None),
        ("app", "GET", "/v2/models/m/infer"),
        ("app", "POST", "/v2/models/m/infer/x"),
    ]
