"""The V2 codec alone: round trips in JSON and binary, and every refusal with its status."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from rootml.errors import ProtocolError
from rootml.export.repository import TensorSpec
from rootml.protocol import decode_infer_response, encode_infer_request
from rootml.serve.codec import check_inputs, encode_infer_response, parse_infer_request

ARRAYS = {
    "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "f16": np.linspace(-2, 2, 6, dtype=np.float16).reshape(2, 3),
    "f64": np.array([[1e-300, -3.5]]),
    "i8": np.array([[-128, 127]], dtype=np.int8),
    "u64": np.array([2**64 - 1, 0], dtype=np.uint64),
    "i64": np.array([[-(2**62)], [5]], dtype=np.int64),
    "b": np.array([[True, False, True]]),
    "s": np.array([b"muon", b"", "électron".encode()], dtype=object),
}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_request_round_trip(binary):
    body, header = encode_infer_request(ARRAYS, outputs=["y"], binary=binary, request_id="abc")
    assert (header is not None) == binary
    request = parse_infer_request(body, header)
    assert request.id == "abc" and request.outputs == [("y", binary)]
    assert [i.name for i in request.inputs] == list(ARRAYS)
    for given in request.inputs:
        expected = ARRAYS[given.name]
        assert given.array.dtype == expected.dtype and given.shape == expected.shape
        np.testing.assert_array_equal(given.array, expected)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_response_round_trip(binary):
    outputs = [(name, array, binary) for name, array in ARRAYS.items()]
    body, header = encode_infer_response("m", "3", outputs, request_id="r1")
    doc = orjson.loads(body if header is None else body[:header])
    assert doc["model_name"] == "m" and doc["model_version"] == "3" and doc["id"] == "r1"
    decoded = decode_infer_response(body, header)
    for name, array in ARRAYS.items():
        np.testing.assert_array_equal(decoded[name].astype(array.dtype), array)


def _doc(data, datatype="FP32", shape=(2, 2)):
    return orjson.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": list(shape), "data": data}]}
    )


def test_nested_and_flat_json_data_agree():
    flat = parse_infer_request(_doc([1, 2, 3, 4])).inputs[0].array
    nested = parse_infer_request(_doc([[1, 2], [3, 4]])).inputs[0].array
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == np.float32 and flat.shape == (2, 2)


@pytest.mark.parametrize(
    "body, header, words",
    [
        (b"not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"inputs": {}}', None, "non-empty 'inputs'"),
        (_doc([1, 2, 3]), None, "needs 4 values"),
        (_doc([[1, 2], [3]]), None, "not a regular array"),
        (_doc(["1", "2", "3", "4"]), None, "not FP32"),
        (_doc([1.5, 2, 3, 4], "INT32"), None, "not INT32"),
        (_doc([1, 2, 3, 300], "UINT8"), None, "outside the range"),
        (_doc([1, 0, 1, 0], "BOOL"), None, "not BOOL"),
        (_doc([1, 2, 3, 4], shape=(2, -2)), None, "non-negative"),
        (_doc([1, 2, 3, 4], shape=(True, 4)), None, "non-negative"),
        (_doc([1, 2, 3, 4], "FLOAT32"), None, "unknown datatype"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', None, "needs 'data'"),
        (_doc([1, 2, 3, 4]), 0, "outside the body"),
        (_doc([1, 2, 3, 4]), 10_000, "outside the body"),
        (_doc([1, 2, 3, 4]), "12a", "not an integer"),
    ],
)
def test_malformed_requests(body, header, words):
    with pytest.raises(ProtocolError, match=words) as err:
        parse_infer_request(body, header)
    assert err.value.status == 400


def _binary(size: int, shape=(2, 2), extra: bytes = b"") -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(shape),
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    return header + np.ones(4, np.float32).tobytes() + extra, len(header)


@pytest.mark.parametrize(
    "size, shape, extra, words",
    [
        (16, (2, 3), b"", "= 24 bytes, but binary_data_size is 16"),
        (20, (2, 2), b"", "runs past the body"),
        (12, (3,), b"", "add up to 12 bytes, but 16"),
        (16, (2, 2), b"\0", "add up to 16 bytes, but 17"),
        (-1, (2, 2), b"", "non-negative integer"),
    ],
)
def test_malformed_binary_requests(size, shape, extra, words):
    body, header = _binary(size, shape, extra)
    with pytest.raises(ProtocolError, match=words):
        parse_infer_request(body, header)


def test_data_and_binary_data_size_together_are_refused():
    body, length = _binary(16)
    doc = orjson.loads(body[:length])
    doc["inputs"][0]["data"] = [9, 9, 9, 9]
    header = orjson.dumps(doc)
    with pytest.raises(ProtocolError, match="both 'data' and parameters.binary_data_size"):
        parse_infer_request(header + body[length:], len(header))
    doc["inputs"][0]["parameters"]["binary_data_size"] = 0  # even an empty binary part
    with pytest.raises(ProtocolError, match="both"):
        parse_infer_request(orjson.dumps(doc))


@pytest.mark.parametrize("request_id", [{"a": 1}, [1, 2], 7, 1.5, True])
def test_an_id_that_is_not_a_string_is_refused(request_id):
    doc = orjson.loads(_doc([1, 2, 3, 4]))
    doc["id"] = request_id
    with pytest.raises(ProtocolError, match="'id' must be a string") as err:
        parse_infer_request(orjson.dumps(doc))
    assert err.value.status == 400
    doc["id"] = "run-7"
    assert parse_infer_request(orjson.dumps(doc)).id == "run-7"


def test_bytes_elements_must_fit():
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 6},
                }
            ]
        }
    )
    body = header + (10).to_bytes(4, "little") + b"ab"
    with pytest.raises(ProtocolError, match="runs past the data"):
        parse_infer_request(body, len(header))


SPECS = [TensorSpec("features", "FP32", (-1, 4)), TensorSpec("mask", "BOOL", (-1, 4))]
OUTS = [TensorSpec("score", "FP32", (-1, 1))]


def _request(**arrays):
    body, header = encode_infer_request(arrays)
    return parse_infer_request(body, header)


def test_check_inputs_accepts_and_returns_batch():
    request = _request(features=np.zeros((3, 4), np.float32), mask=np.ones((3, 4), bool))
    assert check_inputs(request, SPECS, OUTS, max_batch_size=8) == 3
    assert check_inputs(request, SPECS, OUTS, max_batch_size=0) == 0


@pytest.mark.parametrize(
    "arrays, max_batch, words",
    [
        (
            {"feature": np.zeros((3, 4), np.float32), "mask": np.ones((3, 4), bool)},
            8,
            "unknown input 'feature'",
        ),
        (
            {"features": np.zeros((3, 4), np.float64), "mask": np.ones((3, 4), bool)},
            8,
            "datatype FP64",
        ),
        (
            {"features": np.zeros((3, 5), np.float32), "mask": np.ones((3, 5), bool)},
            8,
            "shape \\[3, 5\\]",
        ),
        (
            {"features": np.zeros((12,), np.float32), "mask": np.ones((3, 4), bool)},
            8,
            "shape \\[12\\]",
        ),
        (
            {"features": np.zeros((3, 4), np.float32), "mask": np.ones((2, 4), bool)},
            8,
            "batch size 2 differs",
        ),
        ({"features": np.zeros((3, 4), np.float32)}, 8, "missing inputs \\['mask'\\]"),
        (
            {"features": np.zeros((9, 4), np.float32), "mask": np.ones((9, 4), bool)},
            8,
            "max_batch_size 8",
        ),
    ],
)
def test_check_inputs_refusals(arrays, max_batch, words):
    with pytest.raises(ProtocolError, match=words) as err:
        check_inputs(_request(**arrays), SPECS, OUTS, max_batch)
    assert err.value.status == 400


def test_check_inputs_duplicate_and_unknown_output():
    doc = {
        "inputs": [{"name": "mask", "datatype": "BOOL", "shape": [1, 4], "data": [True] * 4}] * 2
    }
    with pytest.raises(ProtocolError, match="given twice"):
        check_inputs(parse_infer_request(orjson.dumps(doc)), SPECS, OUTS, 8)
    body, header = encode_infer_request(
        {"features": np.zeros((1, 4), np.float32), "mask": np.ones((1, 4), bool)}, outputs=["prob"]
    )
    with pytest.raises(ProtocolError, match="unknown output 'prob'"):
        check_inputs(parse_infer_request(body, header), SPECS, OUTS, 8)
