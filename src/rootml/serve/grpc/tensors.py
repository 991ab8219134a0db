"""Tensors of the gRPC protocol: a ModelInferRequest decoded, a ModelInferResponse encoded.

A request's inputs travel either all in `raw_input_contents` (one entry of raw little-endian
bytes per input, in order: tritonclient's and SONIC's way) or each in the typed field of
`contents` that its datatype names. Either way they become the same `codec.InferRequest` an HTTP
body decodes into, checked by the same code (rootml.protocol's shape and size checks here,
the model's signature or raw columns in serve.physics). Outputs go back in
`raw_output_contents`, as Triton answers them.
"""

from __future__ import annotations

import math

import numpy as np

from rootml.errors import BadRequest
from rootml.protocol import DTYPES, datatype_of, from_binary, from_json, tensor_bytes, tensor_shape
from rootml.serve.codec import InferInput, InferRequest
from rootml.serve.grpc.messages import messages

# The InferTensorContents field of each datatype (FP16 has none: raw only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_Response = messages["ModelInferResponse"]


def _from_contents(tensor, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    field = CONTENTS.get(datatype)
    if field is None:
        raise BadRequest(f"{what}: {datatype} has no contents field; send it in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise BadRequest(
            f"{what}: shape {list(shape)} needs {count} values, contents.{field} has {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    # from_json checks integers against the datatype's range (int_contents holds INT8 too).
    return from_json(np.asarray(values), datatype, shape, what)


def _check_raw_size(raw: bytes, i: int, datatype: str, shape: tuple[int, ...], what: str) -> None:
    if datatype == "BYTES":  # elements of their own lengths: from_binary checks them
        return
    size = math.prod(shape) * DTYPES[datatype].itemsize
    if len(raw) != size:
        raise BadRequest(
            f"{what}: shape {list(shape)} of {datatype} is {size} bytes, "
            f"raw_input_contents[{i}] has {len(raw)} bytes"
        )


def decode_request(request) -> InferRequest:
    """The InferRequest of a ModelInferRequest: its inputs as numpy arrays (raw ones read-only
    views of the message's bytes), the outputs it names (None: all), its id. Raises BadRequest
    naming the input for a datatype, shape or size that does not fit."""
    if not request.inputs:
        raise BadRequest("request needs at least one input")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: send "
            "one per input, in the order of inputs, or none"
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        what = f"input {tensor.name!r}"
        if tensor.datatype not in DTYPES:
            raise BadRequest(f"{what}: unknown datatype {tensor.datatype!r}")
        shape = tensor_shape(list(tensor.shape), what)
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"{what}: both contents and raw_input_contents; send one")
            _check_raw_size(raw[i], i, tensor.datatype, shape, what)
            array = from_binary(raw[i], tensor.datatype, shape, what)
        else:
            array = _from_contents(tensor, tensor.datatype, shape, what)
        inputs.append(InferInput(tensor.name, tensor.datatype, shape, array))
    outputs = [(o.name, True) for o in request.outputs] or None
    return InferRequest(inputs, request.id or None, outputs=outputs, binary_output=True)


def encode_response(
    model_name: str, version: str, names: list[str], results: dict[str, np.ndarray], request_id
):
    """The ModelInferResponse holding the outputs `names` of `results`, in raw_output_contents."""
    response = _Response(model_name=model_name, model_version=version, id=request_id or "")
    for name in names:
        array = results[name]
        response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        response.raw_output_contents.append(tensor_bytes(array))
    return response
