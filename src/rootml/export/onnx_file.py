"""Single-file ONNX models: the checks before any of it is run or stored, and its signature.

ONNX files that reference external data are refused before onnxruntime sees them: external
files are paths chosen by whoever wrote the model (CVE-2022-25882, CVE-2024-27318).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from rootml.errors import ModelError
from rootml.export.model_config import TensorSpec

# ONNX element type -> V2 datatype.
_ONNX_TYPES = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
}


def inside(path: Path, root: Path) -> Path:
    """`path` resolved (links followed); ModelError when that is outside `root`."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ModelError(f"{path} resolves to {resolved}, outside {root}")
    return resolved


def _tensors(graph: onnx.GraphProto):
    """Every TensorProto stored in `graph` and its subgraphs (initializers and attributes)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in [attr.sparse_tensor, *attr.sparse_tensors]:
                yield sparse.values
                yield sparse.indices
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                yield from _tensors(sub)


def validate_onnx(
    model: str | os.PathLike | bytes, model_folder: str | os.PathLike | None = None
) -> onnx.ModelProto:
    """Load and check a single-file ONNX model; return the ModelProto.

    `model` is a path or the file's bytes. A path must resolve inside `model_folder` when one is
    given. Raises ModelError for unreadable protobuf, a model onnx.checker refuses, or any tensor
    stored as external data (``data_location: EXTERNAL``): external files are paths chosen by
    whoever wrote the model (CVE-2022-25882, CVE-2024-27318).
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        data, label = bytes(model), "uploaded model"
    else:
        path = Path(model)
        if model_folder is not None:
            inside(path, Path(model_folder))
        try:
            data, label = path.read_bytes(), str(path)
        except OSError as err:
            raise ModelError(f"cannot read ONNX model {path}: {err}") from err
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise ModelError(f"{label} is not an ONNX model: {err}") from err
    if not proto.HasField("graph"):
        raise ModelError(f"{label} is not an ONNX model: no graph")
    graphs = [proto.graph]
    for function in proto.functions:
        graphs.append(onnx.helper.make_graph(function.node, function.name, [], []))
    for graph in graphs:
        for tensor in _tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
                where = {e.key: e.value for e in tensor.external_data}.get("location", "?")
                raise ModelError(
                    f"{label}: tensor {tensor.name!r} references external data ({where!r}); "
                    "only single-file ONNX models are accepted"
                )
    try:
        onnx.checker.check_model(proto)
    except Exception as err:
        raise ModelError(f"{label} fails onnx.checker: {err}") from err
    return proto


def _value_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ModelError(
            f"graph value {value.name!r} is a {kind}, not a tensor (for skl2onnx "
            "classifiers convert with options={'zipmap': False})"
        )
    tensor = value.type.tensor_type
    if tensor.elem_type not in _ONNX_TYPES:
        raise ModelError(
            f"graph value {value.name!r}: element type {tensor.elem_type} not supported"
        )
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return TensorSpec(value.name, _ONNX_TYPES[tensor.elem_type], shape)


def graph_io(proto: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs (initializers excluded) and outputs of an ONNX graph."""
    stored = {t.name for t in proto.graph.initializer}
    inputs = [_value_spec(v) for v in proto.graph.input if v.name not in stored]
    return inputs, [_value_spec(v) for v in proto.graph.output]
