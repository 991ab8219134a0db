"""Fuzzed infer bodies (hypothesis): every malformed body is refused with a 4xx and a message,
never an unexpected exception (a 5xx), never a hang; the server serves on afterwards.

Many examples go through the codec in process (fast); a smaller number through a live server.
Bodies are built from: random bytes, garbage JSON headers (wrong types, negative and huge dims,
unknown datatypes, nested garbage), and mutations of a valid binary body (truncated, wrong
Inference-Header-Content-Length, binary_data_size off, bytes flipped).
"""

from __future__ import annotations

import collections
import json
import math

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rootml.errors import ProtocolError
from rootml.export.repository import TensorSpec
from rootml.protocol import DTYPES, encode_infer_request
from rootml.serve.codec import check_inputs, parse_infer_request
from tests.serve.conftest import N_FEATURES, make_inputs

IN_PROCESS_EXAMPLES = 500  # per body family
LIVE_EXAMPLES = 60  # per body family
INPUTS = [
    TensorSpec("features", "FP32", (-1, N_FEATURES)),
    TensorSpec("mask", "BOOL", (-1, N_FEATURES)),
]
OUTPUTS = [TensorSpec("score", "FP32", (-1, 1))]
MAX_BATCH = 1024

# JSON values of any shape, with the numbers that break naive code: huge, negative, non-integer.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_garbage = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
dims = st.one_of(
    st.integers(-3, 8),
    st.sampled_from([2**31, 2**32 + 1, 2**40, 2**62, 2**63, 2**64 + 5]),
)
shapes = st.one_of(st.lists(dims, max_size=6), st.lists(st.just(1), min_size=30, max_size=70))
datatypes = st.one_of(st.sampled_from(list(DTYPES)), st.text(max_size=6))


def _maybe(strategy):
    return st.one_of(strategy, json_garbage)


tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": _maybe(st.sampled_from(["features", "mask", "x"])),
        "datatype": _maybe(datatypes),
        "shape": _maybe(shapes),
        "data": json_garbage,
        "parameters": _maybe(
            st.fixed_dictionaries({}, optional={"binary_data_size": _maybe(dims)})
        ),
    },
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "id": json_garbage,
        "inputs": _maybe(st.lists(_maybe(tensors), max_size=3)),
        "outputs": _maybe(
            st.lists(
                _maybe(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "name": _maybe(st.just("score")),
                            "parameters": _maybe(
                                st.fixed_dictionaries({}, optional={"binary_data": json_garbage})
                            ),
                        },
                    )
                ),
                max_size=2,
            )
        ),
        "parameters": _maybe(
            st.fixed_dictionaries({}, optional={"binary_data_output": json_garbage})
        ),
    },
)
header_lengths = st.one_of(
    st.none(),
    st.integers(-5, 2000).map(str),
    # What an HTTP header can carry: printable ASCII.
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=5),
    st.just("1e3"),
)


Case = tuple[bytes, "str | None", bool]  # body, Inference-Header-Content-Length, must refuse


@st.composite
def garbage_json_bodies(draw) -> Case:
    """A JSON header of garbage, raw bytes after it, and a header length near the right one."""
    # json, not orjson: it writes integers beyond 64 bits, which the server must refuse too.
    header = json.dumps(draw(headers)).encode()
    tail = draw(st.binary(max_size=64))
    delta = draw(st.one_of(st.none(), st.integers(-8, 8)))
    length = None if delta is None and not tail else str(len(header) + (delta or 0))
    return header + tail, length, False


@st.composite
def random_bodies(draw) -> Case:
    return draw(st.binary(max_size=256)), draw(header_lengths), True


def _valid_body(rows: int, binary: bool) -> tuple[bytes, int | None]:
    return encode_infer_request(make_inputs(rows, seed=rows), binary=binary)


@st.composite
def near_valid_bodies(draw) -> Case:
    """A valid request (JSON or binary) with one to three of its fields replaced by garbage."""
    binary = draw(st.booleans())
    body, length = _valid_body(draw(st.integers(1, 3)), binary)
    doc = orjson.loads(body[:length] if binary else body)
    for _ in range(draw(st.integers(1, 3))):
        field = draw(
            st.sampled_from(
                ["datatype", "shape", "data", "parameters", "name", "outputs", "top", "inputs"]
            )
        )
        inputs = doc.get("inputs")
        items = [i for i in inputs if isinstance(i, dict)] if isinstance(inputs, list) else []
        if not items:  # an earlier round replaced the inputs themselves
            continue
        item = draw(st.sampled_from(items))
        if field == "datatype":
            item["datatype"] = draw(_maybe(datatypes))
        elif field == "shape":
            item["shape"] = draw(_maybe(shapes))
        elif field in ("data", "name"):
            item[field] = draw(json_garbage)
        elif field == "parameters":
            item["parameters"] = draw(
                _maybe(st.fixed_dictionaries({"binary_data_size": _maybe(dims)}))
            )
        elif field == "outputs":
            doc["outputs"] = draw(
                _maybe(
                    st.lists(
                        st.fixed_dictionaries(
                            {"name": st.just("score")}, optional={"parameters": json_garbage}
                        ),
                        min_size=1,
                        max_size=2,
                    )
                )
            )
        elif field == "top":
            doc[draw(st.sampled_from(["id", "parameters"]))] = draw(json_garbage)
        else:
            doc["inputs"] = draw(_maybe(st.just(items[:1])))
    header = json.dumps(doc).encode()
    if not binary:
        return header, None, False
    return header + body[length:], str(len(header)), False


@st.composite
def mutated_bodies(draw) -> Case:
    """A valid binary request, broken in one way; the first four ways can never be accepted."""
    body, length = _valid_body(draw(st.integers(1, 4)), binary=True)
    kind = draw(
        st.sampled_from(["truncate", "header length", "binary size", "append", "flip", "shape"])
    )
    if kind == "truncate":
        return body[: draw(st.integers(0, len(body) - 1))], str(length), True
    if kind == "header length":
        delta = draw(st.integers(-length, len(body)).filter(lambda d: d != 0))
        return body, str(length + delta), True
    if kind == "binary size":
        doc = orjson.loads(body[:length])
        item = doc["inputs"][draw(st.integers(0, 1))]
        size = item["parameters"]["binary_data_size"]
        item["parameters"]["binary_data_size"] = draw(
            st.one_of(st.integers(-1, 2 * size), dims).filter(lambda s: s != size)
        )
        header = json.dumps(doc).encode()
        return header + body[length:], str(len(header)), True
    if kind == "append":
        return body + draw(st.binary(min_size=1, max_size=16)), str(length), True
    if kind == "flip":  # a byte of the JSON header; may land on a key the server ignores
        data = bytearray(body)
        data[draw(st.integers(0, length - 1))] ^= draw(st.integers(1, 255))
        return bytes(data), str(length), False
    doc = orjson.loads(body[:length])
    doc["inputs"][draw(st.integers(0, 1))]["shape"] = draw(shapes)  # may draw the right one
    header = json.dumps(doc).encode()
    return header + body[length:], str(len(header)), False


@st.composite
def extreme_tensors(draw) -> Case:
    """One tensor of any datatype with an extreme shape (negative, huge, empty, high rank), its
    data consistent with the shape when that is small. A single input never fits the model."""
    datatype = draw(st.sampled_from(list(DTYPES)))
    shape = draw(shapes)
    count = math.prod(shape) if all(d >= 0 for d in shape) else -1
    small = 0 <= count <= 256
    item = {
        "name": draw(st.sampled_from(["features", "mask"])),
        "datatype": datatype,
        "shape": shape,
    }
    if draw(st.booleans()):  # binary
        if datatype == "BYTES":
            size = 4 * count if small else draw(st.integers(0, 64))  # zero-length elements
        else:
            size = count * DTYPES[datatype].itemsize if small else draw(st.integers(0, 64))
        item["parameters"] = {"binary_data_size": size}
        header = json.dumps({"inputs": [item]}).encode()
        return header + bytes(size), str(len(header)), True
    zero = {"BYTES": "", "BOOL": False}.get(datatype, 0)
    item["data"] = [zero] * count if small else draw(json_garbage)
    return json.dumps({"inputs": [item]}).encode(), None, True


FAMILIES = {
    "extreme shapes": extreme_tensors(),
    "random bytes": random_bodies(),
    "garbage JSON header": garbage_json_bodies(),
    "valid request, fields garbled": near_valid_bodies(),
    "valid binary request, broken": mutated_bodies(),
}


FOUND = {
    "unhashable datatype": ({"name": "x", "datatype": ["FP32"], "shape": [1], "data": [1]}, None),
    "outputs parameters not an object": (
        {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
        [{"name": "score", "parameters": True}],
    ),
    "rank over numpy's maximum": (
        {"name": "x", "datatype": "FP32", "shape": [1] * 70, "data": [1]},
        None,
    ),
    "empty tensor with a dim over int64": (
        {"name": "x", "datatype": "FP32", "shape": [0, 2**63], "data": []},
        None,
    ),
    "2**40 BYTES elements in 0 bytes": (
        {"name": "x", "datatype": "BYTES", "shape": [2**40], "parameters": {"binary_data_size": 0}},
        None,
    ),
}


@pytest.mark.parametrize("case", FOUND, ids=list(FOUND))
def test_bodies_the_fuzzing_found(case):
    """Each was an unexpected exception (a 500, or an 8 TiB allocation) before it was fixed."""
    tensor, outputs = FOUND[case]
    doc = {"inputs": [tensor]} | ({"outputs": outputs} if outputs else {})
    header = json.dumps(doc).encode()
    length = str(len(header)) if "parameters" in tensor else None
    with pytest.raises(ProtocolError) as err:
        parse_infer_request(header, length)
    assert err.value.status == 400


def _codec_outcome(body: bytes, length: str | None) -> str:
    """'refused' (ProtocolError 4xx with a message) or 'accepted'; anything else propagates."""
    try:
        request = parse_infer_request(body, length)
        check_inputs(request, INPUTS, OUTPUTS, MAX_BATCH)
    except ProtocolError as err:
        assert 400 <= err.status < 500 and str(err), (err.status, str(err))
        return "refused"
    return "accepted"


def _fuzz_codec(strategy) -> collections.Counter:
    tally: collections.Counter = collections.Counter()

    @settings(
        max_examples=IN_PROCESS_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def one(case):
        body, length, must_refuse = case
        outcome = _codec_outcome(body, length)
        assert outcome == "refused" or not must_refuse, case
        tally[outcome] += 1

    one()
    return tally


def test_fuzzed_bodies_through_the_codec(results):
    counts = {family: _fuzz_codec(strategy) for family, strategy in FAMILIES.items()}
    assert all(c["refused"] > 0 for c in counts.values()), counts
    results.update(
        kind="bad input",
        what="fuzzed infer bodies, codec in process (hypothesis)",
        tried=sum(c.total() for c in counts.values()),
        refused=sum(c["refused"] for c in counts.values()),
        accepted=sum(c["accepted"] for c in counts.values()),
        server_errors=0,
        families={f: dict(c) for f, c in counts.items()},
    )


def test_fuzzed_bodies_against_the_live_server(server, results):
    counts: collections.Counter = collections.Counter()
    url = f"{server.url}/v2/models/mlp/infer"
    with httpx.Client(timeout=10) as http:
        for strategy in FAMILIES.values():

            @settings(
                max_examples=LIVE_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(strategy, st.sampled_from([None, "gzip", "deflate"]))
            def one(case, encoding):
                body, length, must_refuse = case
                headers = {} if length is None else {"Inference-Header-Content-Length": length}
                if encoding is not None:
                    headers["Content-Encoding"] = encoding  # the body is not compressed: 400
                response = http.post(url, content=body, headers=headers)
                assert response.status_code < 500, response.text
                if response.status_code == 200:
                    assert not must_refuse and encoding is None, case
                    counts["accepted"] += 1
                    return
                assert 400 <= response.status_code < 500
                assert response.json()["error"], response.text
                counts["refused"] += 1

            one()
    assert counts["refused"] > 0
    # The server still serves the same answers as before the fuzzing.
    inputs = make_inputs(3)
    body, length = encode_infer_request(inputs)
    response = httpx.post(
        url, content=body, headers={"Inference-Header-Content-Length": str(length)}
    )
    assert response.status_code == 200 and server.alive()
    results.update(
        kind="bad input",
        what="fuzzed infer bodies, live server (hypothesis)",
        tried=counts.total(),
        refused=counts["refused"],
        accepted=counts["accepted"],
        server_errors=0,
    )
