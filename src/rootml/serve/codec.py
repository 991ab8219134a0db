"""The KServe V2 / Open Inference Protocol wire format: JSON and the binary tensor extension.

Pure functions of bytes and numpy arrays, no web framework and no onnxruntime, so every check is
testable alone. Each check raises ProtocolError(message, status) with the HTTP status to answer.

Binary tensor extension (tritonclient's default): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw little-endian tensors in the
header's order; a tensor sent that way carries ``parameters.binary_data_size`` instead of ``data``.
BYTES tensors are sent as 4-byte little-endian lengths each followed by the bytes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from rootml.errors import ProtocolError

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_DATATYPE_OF = {dt.kind + str(dt.itemsize): name for name, dt in DTYPES.items() if name != "BYTES"}
# numpy kinds of JSON values accepted for each kind of datatype.
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}
# Bounds that keep numpy from failing on a shape (rank over its maximum, sizes overflowing
# int64 even for an empty tensor); no request body can carry a tensor anywhere near them.
_MAX_RANK = 32
_MAX_ELEMENTS = 1 << 48


@dataclass
class InferInput:
    """One input tensor of a request, decoded into `array` (shape `shape`, dtype of `datatype`).

    For ragged JSON data (rows of different lengths, see parse_infer_request) `array` is the
    content (N,) of all rows one after the other and `counts` (B,) int64 the items per row.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray
    counts: np.ndarray | None = None


@dataclass
class InferRequest:
    """A decoded infer request. `outputs` is None when the request names no outputs."""

    inputs: list[InferInput]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[tuple[str, bool]] | None = None  # (name, binary)
    binary_output: bool = False


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype name of a numpy array (object and string arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _DATATYPE_OF[array.dtype.kind + str(array.dtype.itemsize)]
    except KeyError:
        raise ProtocolError(f"numpy dtype {array.dtype} has no V2 datatype") from None


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise ProtocolError(f"{what}: 'shape' must be a list of non-negative integers")
    if len(value) > _MAX_RANK:
        raise ProtocolError(f"{what}: 'shape' has {len(value)} dims, more than {_MAX_RANK}")
    if math.prod(d for d in value if d) > _MAX_ELEMENTS:
        raise ProtocolError(f"{what}: 'shape' {value} is larger than any request can carry")
    return tuple(value)


def _decode_bytes_elements(raw: bytes, count: int, what: str) -> np.ndarray:
    # Each element takes at least its 4-byte length: check before allocating `count` objects.
    if 4 * count > len(raw):
        raise ProtocolError(
            f"{what}: {count} BYTES elements need at least {4 * count} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    # BYTES elements have individual lengths, so this walks them one by one.
    raw = bytes(raw)
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise ProtocolError(f"{what}: BYTES data ends inside element {i}")
        n = int.from_bytes(raw[pos : pos + 4], "little")
        pos += 4
        if pos + n > len(raw):
            raise ProtocolError(f"{what}: BYTES element {i} runs past the data")
        out[i] = raw[pos : pos + n]
        pos += n
    if pos != len(raw):
        raise ProtocolError(f"{what}: {len(raw) - pos} bytes left after {count} BYTES elements")
    return out


def _from_binary(
    raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], what: str
) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes_elements(raw, count, what).reshape(shape)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            f"{what}: shape {list(shape)} x {dtype.itemsize} bytes = {count * dtype.itemsize} "
            f"bytes, but binary_data_size is {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_json(data: Any, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).reshape(-1)
        if flat.size != count:
            raise ProtocolError(
                f"{what}: shape {list(shape)} needs {count} values, 'data' has {flat.size}"
            )
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"{what}: BYTES data must be strings")
        return np.array([v.encode() for v in flat], dtype=object).reshape(shape)
    try:
        values = np.asarray(data)
    except (ValueError, OverflowError) as err:
        raise ProtocolError(f"{what}: 'data' is not a regular array: {err}") from None
    dtype = DTYPES[datatype]
    if values.size != count:
        raise ProtocolError(
            f"{what}: shape {list(shape)} needs {count} values, 'data' has {values.size}"
        )
    kinds = _JSON_KINDS[dtype.kind]
    if dtype.kind in "iu" and values.dtype.kind == "f":
        # numpy reads integers beyond int64 as floats; keep them exact if they are all integers.
        exact = np.asarray(data, dtype=object).reshape(-1)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in exact):
            values, kinds = exact, "O"
    if count and values.dtype.kind not in kinds:
        raise ProtocolError(f"{what}: 'data' holds {values.dtype} values, not {datatype}")
    if dtype.kind in "iu" and count:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise ProtocolError(f"{what}: values outside the range of {datatype}")
    return values.astype(dtype, copy=False).reshape(shape)


def _is_ragged(data: Any, shape: tuple[int, ...]) -> bool:
    # Rows as lists under a rank-1 shape: B rows of items, not B numbers.
    return len(shape) == 1 and isinstance(data, list) and bool(data) and isinstance(data[0], list)


def _from_json_ragged(
    data: list, datatype: str, shape: tuple[int, ...], what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(content (N,), counts (B,) int64) of `data`: B lists of numbers of different lengths."""
    if len(data) != shape[0]:
        raise ProtocolError(
            f"{what}: ragged data of {len(data)} rows needs shape [{len(data)}], not {list(shape)}"
        )
    if datatype == "BYTES" or not set(map(type, data)) <= {list}:
        raise ProtocolError(f"{what}: ragged data must be a list of lists of numbers, one per row")
    counts = np.fromiter(map(len, data), np.int64, len(data))
    try:
        content = np.asarray(list(itertools.chain.from_iterable(data)))
    except (ValueError, OverflowError) as err:
        raise ProtocolError(f"{what}: the rows of ragged data must hold numbers: {err}") from None
    if content.ndim != 1:
        raise ProtocolError(f"{what}: the rows of ragged data must hold numbers, not lists")
    return _from_json(content, datatype, content.shape, what), counts


def _header_length(value: str | int | None, body_length: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except (TypeError, ValueError):
        raise ProtocolError(
            f"Inference-Header-Content-Length {value!r} is not an integer"
        ) from None
    if not 0 < length <= body_length:
        raise ProtocolError(
            f"Inference-Header-Content-Length {length} is outside the body of {body_length} bytes"
        )
    return length


def parse_infer_request(
    body: bytes, header_length: str | int | None = None, ragged: Container[str] = ()
) -> InferRequest:
    """Decode an infer request body; `header_length` is the Inference-Header-Content-Length header.

    Inputs come back as numpy arrays of their shape and datatype; binary inputs are read-only views
    of `body`. An input named in `ragged` may carry JSON `data` as B lists of different lengths
    under shape [B] (jagged branches, see serve.physics); it comes back as content and counts.
    Raises ProtocolError(400) for any malformed part: JSON, datatypes, shapes, sizes.
    """
    length = _header_length(header_length, len(body))
    header, binary = (body, b"") if length is None else (body[:length], memoryview(body)[length:])
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as err:
        raise ProtocolError(f"request header is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("request needs a non-empty 'inputs' list")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be an object")
    inputs, offset = [], 0
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"inputs[{i}] must be an object with a string 'name'")
        what = f"input {item['name']!r}"
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or datatype not in DTYPES:
            raise ProtocolError(f"{what}: unknown datatype {datatype!r}")
        shape = _shape(item.get("shape"), what)
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        counts = None
        if size is not None and "data" in item:
            raise ProtocolError(
                f"{what}: has both 'data' and parameters.binary_data_size; send one of them"
            )
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"{what}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise ProtocolError(
                    f"{what}: binary_data_size {size} runs past the body "
                    f"({len(binary) - offset} bytes left after the JSON header)"
                )
            array = _from_binary(binary[offset : offset + size], datatype, shape, what)
            offset += size
        elif "data" in item and item["name"] in ragged and _is_ragged(item["data"], shape):
            array, counts = _from_json_ragged(item["data"], datatype, shape, what)
        elif "data" in item:
            array = _from_json(item["data"], datatype, shape, what)
        else:
            raise ProtocolError(f"{what}: needs 'data' or parameters.binary_data_size")
        inputs.append(InferInput(item["name"], datatype, shape, array, counts))
    if offset != len(binary):
        raise ProtocolError(
            f"binary_data_size of the inputs add up to {offset} bytes, but {len(binary)} bytes "
            "follow the JSON header"
        )
    binary_output = bool(parameters.get("binary_data_output", False))
    outputs = None
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise ProtocolError("'outputs' must be a list")
        outputs = []
        for item in doc["outputs"]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ProtocolError("each of 'outputs' must be an object with a string 'name'")
            params = item.get("parameters") or {}
            if not isinstance(params, dict):
                raise ProtocolError(f"output {item['name']!r}: 'parameters' must be an object")
            outputs.append((item["name"], bool(params.get("binary_data", binary_output))))
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"'id' must be a string, not {type(request_id).__name__}")
    return InferRequest(inputs, request_id, parameters, outputs, binary_output)


def check_inputs(request: InferRequest, inputs: list, outputs: list, max_batch_size: int) -> int:
    """Check a request against a model's inputs/outputs (TensorSpec lists); return the batch size.

    Names, datatypes, ranks and fixed dims must match the model; every model input must be given
    once; requested outputs must exist. With max_batch_size > 0 the first dim is the batch: equal
    across inputs and at most max_batch_size (0 is returned for unbatched models).
    Raises ProtocolError(400).
    """
    specs = {t.name: t for t in inputs}
    seen: set[str] = set()
    batch = None
    for given in request.inputs:
        spec = specs.get(given.name)
        if spec is None:
            raise ProtocolError(
                f"unknown input {given.name!r}; the model's inputs are {sorted(specs)}"
            )
        if given.name in seen:
            raise ProtocolError(f"input {given.name!r} given twice")
        seen.add(given.name)
        if given.datatype != spec.datatype:
            raise ProtocolError(
                f"input {given.name!r}: datatype {given.datatype}, the model expects {spec.datatype}"
            )
        if len(given.shape) != len(spec.shape) or any(
            want != -1 and want != got for want, got in zip(spec.shape, given.shape)
        ):
            raise ProtocolError(
                f"input {given.name!r}: shape {list(given.shape)}, the model expects {list(spec.shape)}"
            )
        if max_batch_size > 0:
            if batch is not None and given.shape[0] != batch:
                raise ProtocolError(
                    f"input {given.name!r}: batch size {given.shape[0]} differs from {batch}"
                )
            batch = given.shape[0]
    missing = sorted(set(specs) - seen)
    if missing:
        raise ProtocolError(f"missing inputs {missing}")
    names = {t.name for t in outputs}
    for name, _ in request.outputs or []:
        if name not in names:
            raise ProtocolError(f"unknown output {name!r}; the model's outputs are {sorted(names)}")
    if max_batch_size > 0 and batch > max_batch_size:
        raise ProtocolError(f"batch size {batch} is larger than max_batch_size {max_batch_size}")
    return batch or 0


def _tensor_bytes(array: np.ndarray) -> bytes:
    if datatype_of(array) == "BYTES":
        parts = []
        for value in array.reshape(-1):
            raw = value if isinstance(value, bytes) else str(value).encode()
            parts += [len(raw).to_bytes(4, "little"), raw]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _json_data(array: np.ndarray) -> Any:
    if datatype_of(array) == "BYTES":
        return [
            v.decode(errors="replace") if isinstance(v, bytes) else str(v)
            for v in array.reshape(-1)
        ]
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return np.ascontiguousarray(array.reshape(-1))


def _encode(
    doc: dict[str, Any], key: str, tensors: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    entries, blobs = [], []
    for name, array, binary in tensors:
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if binary:
            blob = _tensor_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array)
        entries.append(entry)
    doc[key] = entries
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def encode_infer_response(
    model_name: str,
    model_version: str,
    outputs: list[tuple[str, np.ndarray, bool]],
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """The response body for `outputs` [(name, array, binary)], and the JSON header length.

    The header length is None when no output is binary (the body is then plain JSON); otherwise
    it goes in the Inference-Header-Content-Length response header.
    """
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    return _encode(doc, "outputs", outputs)


def encode_infer_request(
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None = None,
    binary: bool = True,
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """A request body for `inputs` (name -> array), asking for `outputs` (all when None).

    With `binary` inputs travel as raw bytes and outputs are asked back the same way.
    Returns the body and the JSON header length (None for a JSON-only body).
    """
    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    else:
        doc["parameters"] = {"binary_data_output": binary}
    return _encode(doc, "inputs", [(n, np.asarray(a), binary) for n, a in inputs.items()])


def decode_infer_response(
    body: bytes, header_length: str | int | None = None
) -> dict[str, np.ndarray]:
    """Output arrays (name -> array) of an infer response body. Raises ProtocolError if malformed."""
    length = _header_length(header_length, len(body))
    header, binary = (body, b"") if length is None else (body[:length], memoryview(body)[length:])
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as err:
        raise ProtocolError(f"response is not valid JSON: {err}") from None
    if "error" in doc:
        raise ProtocolError(doc["error"])
    arrays, offset = {}, 0
    for item in doc.get("outputs", []):
        name, datatype = item["name"], item["datatype"]
        shape = _shape(item["shape"], f"output {name!r}")
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arrays[name] = _from_binary(binary[offset : offset + size], datatype, shape, name)
            offset += size
        else:
            arrays[name] = _from_json(item["data"], datatype, shape, f"output {name!r}")
    return arrays
