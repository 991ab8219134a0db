"""The server's side of the V2 wire format: infer requests decoded and checked, answers encoded.

Built on rootml.protocol (the datatype table, tensor decoders and encoders that the client shares);
pure functions of bytes and numpy arrays, no web framework and no onnxruntime, so every check is
testable alone. Each check raises a rootml.errors meaning (BadRequest) that the server's edge
answers with its status.
"""

from __future__ import annotations

import itertools
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from rootml.errors import BadRequest
from rootml.protocol import (
    DTYPES,
    encode_tensors,
    from_binary,
    from_json,
    split_body,
    tensor_shape,
)


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


def _is_ragged(data: Any, shape: tuple[int, ...]) -> bool:
    # Rows as lists under a rank-1 shape: B rows of items, not B numbers.
    return len(shape) == 1 and isinstance(data, list) and bool(data) and isinstance(data[0], list)


def _from_json_ragged(
    data: list, datatype: str, shape: tuple[int, ...], what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(content (N,), counts (B,) int64) of `data`: B lists of numbers of different lengths."""
    if len(data) != shape[0]:
        raise BadRequest(
            f"{what}: ragged data of {len(data)} rows needs shape [{len(data)}], not {list(shape)}"
        )
    if datatype == "BYTES" or not set(map(type, data)) <= {list}:
        raise BadRequest(f"{what}: ragged data must be a list of lists of numbers, one per row")
    counts = np.fromiter(map(len, data), np.int64, len(data))
    try:
        content = np.asarray(list(itertools.chain.from_iterable(data)))
    except (ValueError, OverflowError) as err:
        raise BadRequest(f"{what}: the rows of ragged data must hold numbers: {err}") from None
    if content.ndim != 1:
        raise BadRequest(f"{what}: the rows of ragged data must hold numbers, not lists")
    return from_json(content, datatype, content.shape, what), counts


def _decode_input(
    i: int, item: Any, binary: bytes | memoryview, offset: int, ragged: Container[str]
) -> tuple[InferInput, int]:
    """inputs[i] of a request decoded, its binary data (if any) at `offset` of `binary`; and
    the offset of the next input's binary data."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise BadRequest(f"inputs[{i}] must be an object with a string 'name'")
    what = f"input {item['name']!r}"
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise BadRequest(f"{what}: unknown datatype {datatype!r}")
    shape = tensor_shape(item.get("shape"), what)
    params = item.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    counts = None
    if size is not None and "data" in item:
        raise BadRequest(
            f"{what}: has both 'data' and parameters.binary_data_size; send one of them"
        )
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"{what}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise BadRequest(
                f"{what}: binary_data_size {size} runs past the body "
                f"({len(binary) - offset} bytes left after the JSON header)"
            )
        array = from_binary(binary[offset : offset + size], datatype, shape, what)
        offset += size
    elif "data" in item and item["name"] in ragged and _is_ragged(item["data"], shape):
        array, counts = _from_json_ragged(item["data"], datatype, shape, what)
    elif "data" in item:
        array = from_json(item["data"], datatype, shape, what)
    else:
        raise BadRequest(f"{what}: needs 'data' or parameters.binary_data_size")
    return InferInput(item["name"], datatype, shape, array, counts), offset


def _requested_outputs(raw: Any, binary_output: bool) -> list[tuple[str, bool]]:
    """(name, binary) of the outputs a request's "outputs" asks for."""
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    outputs = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each of 'outputs' must be an object with a string 'name'")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"output {item['name']!r}: 'parameters' must be an object")
        outputs.append((item["name"], bool(params.get("binary_data", binary_output))))
    return outputs


def parse_infer_request(
    body: bytes, header_length: str | int | None = None, ragged: Container[str] = ()
) -> InferRequest:
    """Decode an infer request body; `header_length` is the Inference-Header-Content-Length header.

    Inputs come back as numpy arrays of their shape and datatype; binary inputs are read-only views
    of `body`. An input named in `ragged` may carry JSON `data` as B lists of different lengths
    under shape [B] (jagged branches, see serve.physics); it comes back as content and counts.
    Raises BadRequest(400) for any malformed part: JSON, datatypes, shapes, sizes.
    """
    header, binary = split_body(body, header_length)
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"request header is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    inputs, offset = [], 0
    for i, item in enumerate(raw_inputs):
        tensor, offset = _decode_input(i, item, binary, offset, ragged)
        inputs.append(tensor)
    if offset != len(binary):
        raise BadRequest(
            f"binary_data_size of the inputs add up to {offset} bytes, but {len(binary)} bytes "
            "follow the JSON header"
        )
    binary_output = bool(parameters.get("binary_data_output", False))
    outputs = doc.get("outputs")
    if outputs is not None:
        outputs = _requested_outputs(outputs, binary_output)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, not {type(request_id).__name__}")
    return InferRequest(inputs, request_id, parameters, outputs, binary_output)


def check_inputs(request: InferRequest, inputs: list, outputs: list, max_batch_size: int) -> int:
    """Check a request against a model's inputs/outputs (TensorSpec lists); return the batch size.

    Names, datatypes, ranks and fixed dims must match the model; every model input must be given
    once; requested outputs must exist. With max_batch_size > 0 the first dim is the batch: equal
    across inputs and at most max_batch_size (0 is returned for unbatched models).
    Raises BadRequest(400).
    """
    specs = {t.name: t for t in inputs}
    seen: set[str] = set()
    batch = None
    for given in request.inputs:
        spec = specs.get(given.name)
        if spec is None:
            raise BadRequest(
                f"unknown input {given.name!r}; the model's inputs are {sorted(specs)}"
            )
        if given.name in seen:
            raise BadRequest(f"input {given.name!r} given twice")
        seen.add(given.name)
        if given.datatype != spec.datatype:
            raise BadRequest(
                f"input {given.name!r}: datatype {given.datatype}, the model expects {spec.datatype}"
            )
        if len(given.shape) != len(spec.shape) or any(
            want != -1 and want != got for want, got in zip(spec.shape, given.shape)
        ):
            raise BadRequest(
                f"input {given.name!r}: shape {list(given.shape)}, the model expects {list(spec.shape)}"
            )
        if max_batch_size > 0:
            if batch is not None and given.shape[0] != batch:
                raise BadRequest(
                    f"input {given.name!r}: batch size {given.shape[0]} differs from {batch}"
                )
            batch = given.shape[0]
    missing = sorted(set(specs) - seen)
    if missing:
        raise BadRequest(f"missing inputs {missing}")
    names = {t.name for t in outputs}
    for name, _ in request.outputs or []:
        if name not in names:
            raise BadRequest(f"unknown output {name!r}; the model's outputs are {sorted(names)}")
    if max_batch_size > 0 and batch > max_batch_size:
        raise BadRequest(f"batch size {batch} is larger than max_batch_size {max_batch_size}")
    return batch or 0


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
    return encode_tensors(doc, "outputs", outputs)
