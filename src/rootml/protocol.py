"""The KServe V2 / Open Inference Protocol wire format that client and server share.

The datatype table, tensors to and from JSON and raw bytes, request encoding and response
decoding, and the split of a binary body. Pure functions of bytes and numpy arrays: no web
framework, no onnxruntime, no torch; `rootml.client` imports this and nothing of the server, and
the server's own decoding (rootml.serve.codec) builds on it. Malformed data raises BadRequest.

Binary tensor extension (tritonclient's default): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw little-endian tensors in the
header's order; a tensor sent that way carries ``parameters.binary_data_size`` instead of ``data``.
BYTES tensors are sent as 4-byte little-endian lengths each followed by the bytes.

rootml's convention for jagged branches (raw physics columns, see rootml.serve.physics): a
branch "X" travels as its items "X" (N,) and "X.counts" (B,), the items per entry
(`columns_to_inputs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from rootml.errors import BadRequest, ProtocolError

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
COUNTS_SUFFIX = ".counts"
_DATATYPE_OF = {dt.kind + str(dt.itemsize): name for name, dt in DTYPES.items() if name != "BYTES"}
# numpy kinds of JSON values accepted for each kind of datatype.
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}
# Bounds that keep numpy from failing on a shape (rank over its maximum, sizes overflowing
# int64 even for an empty tensor); no request body can carry a tensor anywhere near them.
_MAX_RANK = 32
_MAX_ELEMENTS = 1 << 48


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype name of a numpy array (object and string arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _DATATYPE_OF[array.dtype.kind + str(array.dtype.itemsize)]
    except KeyError:
        raise BadRequest(f"numpy dtype {array.dtype} has no V2 datatype") from None


def tensor_shape(value: Any, what: str) -> tuple[int, ...]:
    """A tensor's "shape" checked: a list of at most 32 non-negative integers, of a size numpy
    can hold. `what` names the tensor in the BadRequest raised."""
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise BadRequest(f"{what}: 'shape' must be a list of non-negative integers")
    if len(value) > _MAX_RANK:
        raise BadRequest(f"{what}: 'shape' has {len(value)} dims, more than {_MAX_RANK}")
    if math.prod(d for d in value if d) > _MAX_ELEMENTS:
        raise BadRequest(f"{what}: 'shape' {value} is larger than any request can carry")
    return tuple(value)


def _decode_bytes_elements(raw: bytes, count: int, what: str) -> np.ndarray:
    # Each element takes at least its 4-byte length: check before allocating `count` objects.
    if 4 * count > len(raw):
        raise BadRequest(
            f"{what}: {count} BYTES elements need at least {4 * count} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    # BYTES elements have individual lengths, so this walks them one by one.
    raw = bytes(raw)
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise BadRequest(f"{what}: BYTES data ends inside element {i}")
        n = int.from_bytes(raw[pos : pos + 4], "little")
        pos += 4
        if pos + n > len(raw):
            raise BadRequest(f"{what}: BYTES element {i} runs past the data")
        out[i] = raw[pos : pos + n]
        pos += n
    if pos != len(raw):
        raise BadRequest(f"{what}: {len(raw) - pos} bytes left after {count} BYTES elements")
    return out


def from_binary(
    raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], what: str
) -> np.ndarray:
    """The tensor in `raw` (binary extension bytes), of `datatype` and `shape`; a read-only view
    of `raw` for numbers. Raises BadRequest when the size does not match."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes_elements(raw, count, what).reshape(shape)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(
            f"{what}: shape {list(shape)} x {dtype.itemsize} bytes = {count * dtype.itemsize} "
            f"bytes, but binary_data_size is {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def from_json(data: Any, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """The tensor of JSON `data` (flat or nested, row-major), of `datatype` and `shape`. Raises
    BadRequest for a wrong count, values of another kind, or integers out of range."""
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).reshape(-1)
        if flat.size != count:
            raise BadRequest(
                f"{what}: shape {list(shape)} needs {count} values, 'data' has {flat.size}"
            )
        if not all(isinstance(v, str) for v in flat):
            raise BadRequest(f"{what}: BYTES data must be strings")
        return np.array([v.encode() for v in flat], dtype=object).reshape(shape)
    try:
        values = np.asarray(data)
    except (ValueError, OverflowError) as err:
        raise BadRequest(f"{what}: 'data' is not a regular array: {err}") from None
    dtype = DTYPES[datatype]
    if values.size != count:
        raise BadRequest(
            f"{what}: shape {list(shape)} needs {count} values, 'data' has {values.size}"
        )
    kinds = _JSON_KINDS[dtype.kind]
    if dtype.kind in "iu" and values.dtype.kind == "f":
        # numpy reads integers beyond int64 as floats; keep them exact if they are all integers.
        exact = np.asarray(data, dtype=object).reshape(-1)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in exact):
            values, kinds = exact, "O"
    if count and values.dtype.kind not in kinds:
        raise BadRequest(f"{what}: 'data' holds {values.dtype} values, not {datatype}")
    if dtype.kind in "iu" and count:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise BadRequest(f"{what}: values outside the range of {datatype}")
    return values.astype(dtype, copy=False).reshape(shape)


def split_body(
    body: bytes, header_length: str | int | None
) -> tuple[bytes | memoryview, bytes | memoryview]:
    """(JSON header, binary tensors) of a body; `header_length` is its
    Inference-Header-Content-Length (None: all JSON). Raises BadRequest for a length that is not
    an integer within the body."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except (TypeError, ValueError):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length!r} is not an integer"
        ) from None
    if not 0 < length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {length} is outside the body of {len(body)} bytes"
        )
    return body[:length], memoryview(body)[length:]


def tensor_bytes(array: np.ndarray) -> bytes:
    """The raw little-endian bytes of a tensor (BYTES: each element after its 4-byte length)."""
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


def encode_tensors(
    doc: dict[str, Any], key: str, tensors: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """`doc` with `tensors` [(name, array, binary)] under `key` ("inputs" or "outputs"), encoded:
    (body, JSON header length), the length None when no tensor is binary (a JSON-only body)."""
    entries, blobs = [], []
    for name, array, binary in tensors:
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if binary:
            blob = tensor_bytes(array)
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
    return encode_tensors(doc, "inputs", [(n, np.asarray(a), binary) for n, a in inputs.items()])


def decode_infer_response(
    body: bytes, header_length: str | int | None = None
) -> dict[str, np.ndarray]:
    """Output arrays (name -> array) of an infer response body. Raises ProtocolError with the
    server's message for an error body, BadRequest for a malformed one."""
    header, binary = split_body(body, header_length)
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"response is not valid JSON: {err}") from None
    if "error" in doc:
        raise ProtocolError(doc["error"])
    arrays, offset = {}, 0
    for item in doc.get("outputs", []):
        name, datatype = item["name"], item["datatype"]
        shape = tensor_shape(item["shape"], f"output {name!r}")
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arrays[name] = from_binary(binary[offset : offset + size], datatype, shape, name)
            offset += size
        else:
            arrays[name] = from_json(item["data"], datatype, shape, f"output {name!r}")
    return arrays


def columns_to_inputs(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Raw columns (branch -> numpy or awkward array of B entries) as request inputs: jagged
    awkward arrays become content "X" (N,) and "X.counts" (B,) int64; others numpy as they are."""
    inputs = {}
    for name, values in columns.items():
        if isinstance(values, np.ndarray):
            inputs[name] = values
            continue
        # awkward is imported only for awkward arrays: a client sending numpy never loads it.
        import awkward as ak

        from rootml.transforms.pad import jagged_parts

        if (
            isinstance(values, ak.Array)
            and values.ndim > 1
            and not isinstance(values.type.content, ak.types.RegularType)
        ):
            counts, content = jagged_parts(values)
            inputs[name], inputs[name + COUNTS_SUFFIX] = np.asarray(content), counts
        else:
            inputs[name] = ak.to_numpy(values)
    return inputs
