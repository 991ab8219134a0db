"""The model repository in Triton's layout, and the loader the server uses.

```
<repo>/<name>/config.pbtxt        Triton config (platform onnxruntime_onnx, batching, inputs, outputs)
<repo>/<name>/<N>/model.onnx      numeric version folders, single-file ONNX; highest is the default
<repo>/<name>/rootml.json         rootml's own metadata (optional)
```
Nothing here reads outside the repository folder: model names are plain names, never paths,
symlinks that resolve elsewhere are refused, and ONNX files that reference external data are
refused before onnxruntime sees them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from rootml.errors import ModelError
from rootml.export.pbtxt import format_config, parse_config

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
METADATA_FILE = "rootml.json"
DEFAULT_MAX_BATCH_SIZE = 1024
# Per-model settings that a regenerated config.pbtxt keeps from the one it replaces.
_KEPT_CONFIG_KEYS = ("dynamic_batching", "version_policy", "instance_group", "parameters")

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_VERSION = re.compile(r"[0-9]+")

# ONNX element type -> (V2 datatype, Triton config data_type).
_ONNX_TYPES = {
    onnx.TensorProto.BOOL: ("BOOL", "TYPE_BOOL"),
    onnx.TensorProto.UINT8: ("UINT8", "TYPE_UINT8"),
    onnx.TensorProto.UINT16: ("UINT16", "TYPE_UINT16"),
    onnx.TensorProto.UINT32: ("UINT32", "TYPE_UINT32"),
    onnx.TensorProto.UINT64: ("UINT64", "TYPE_UINT64"),
    onnx.TensorProto.INT8: ("INT8", "TYPE_INT8"),
    onnx.TensorProto.INT16: ("INT16", "TYPE_INT16"),
    onnx.TensorProto.INT32: ("INT32", "TYPE_INT32"),
    onnx.TensorProto.INT64: ("INT64", "TYPE_INT64"),
    onnx.TensorProto.FLOAT16: ("FP16", "TYPE_FP16"),
    onnx.TensorProto.FLOAT: ("FP32", "TYPE_FP32"),
    onnx.TensorProto.DOUBLE: ("FP64", "TYPE_FP64"),
    onnx.TensorProto.STRING: ("BYTES", "TYPE_STRING"),
}
TRITON_TYPES = {v2: triton for v2, triton in _ONNX_TYPES.values()}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: V2 datatype and shape, -1 for a variable dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class LoadedModel:
    """One version of a model, ready to run: its onnxruntime session and its metadata."""

    name: str
    version: int
    path: Path
    session: Any  # onnxruntime.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None  # rootml.json, None for plain ONNX models

    @property
    def max_batch_size(self) -> int:
        return int(self.config.get("max_batch_size", 0))


def check_model_name(name: str) -> str:
    """Return `name` if it is a safe model name (``[A-Za-z0-9_.-]+``, not "." or ".."), else raise ModelError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise ModelError(f"invalid model name {name!r}: use letters, digits, '_', '.', '-' only")
    return name


def _inside(path: Path, root: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ModelError(f"{path} resolves to {resolved}, outside {root}")
    return resolved


def model_dir(repo: str | os.PathLike, name: str) -> Path:
    """The folder of model `name` in `repo`; ModelError if the name is unsafe or escapes `repo`."""
    repo = Path(repo)
    path = repo / check_model_name(name)
    _inside(path, repo)
    return path


def list_models(repo: str | os.PathLike) -> list[str]:
    """Names of the model folders of `repo`, sorted; unsafe names and escaping links are skipped."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ModelError(f"model repository {repo} is not a directory")
    names = []
    for entry in sorted(repo.iterdir()):
        if not entry.is_dir() or not _NAME.fullmatch(entry.name) or entry.name in (".", ".."):
            continue
        if entry.resolve().is_relative_to(repo.resolve()):
            names.append(entry.name)
    return names


def list_versions(repo: str | os.PathLike, name: str) -> list[int]:
    """Versions of model `name` that hold a model.onnx, ascending."""
    folder = model_dir(repo, name)
    if not folder.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in folder.iterdir()
        if _VERSION.fullmatch(entry.name) and (entry / MODEL_FILE).is_file()
    )


def next_version(repo: str | os.PathLike, name: str) -> int:
    """One more than the highest numeric version folder (with or without a model), from 1."""
    folder = model_dir(repo, name)
    taken = (
        [int(e.name) for e in folder.iterdir() if _VERSION.fullmatch(e.name)]
        if folder.is_dir()
        else []
    )
    return max(taken, default=0) + 1


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
            _inside(path, Path(model_folder))
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
    return TensorSpec(value.name, _ONNX_TYPES[tensor.elem_type][0], shape)


def graph_io(proto: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs (initializers excluded) and outputs of an ONNX graph."""
    stored = {t.name for t in proto.graph.initializer}
    inputs = [_value_spec(v) for v in proto.graph.input if v.name not in stored]
    return inputs, [_value_spec(v) for v in proto.graph.output]


def make_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> dict[str, Any]:
    """A Triton config dict for an ONNX graph.

    When every input and output has a variable first dim it is taken as the batch dim:
    ``max_batch_size`` is kept and dims are written without it (a rank-1 tensor becomes
    ``dims: [1]`` with ``reshape { shape: [] }``, as Triton wants). Otherwise max_batch_size is 0
    and dims are the full shapes.
    """
    batched = max_batch_size > 0 and all(t.shape and t.shape[0] == -1 for t in inputs + outputs)

    def entry(t: TensorSpec) -> dict[str, Any]:
        dims = list(t.shape[1:] if batched else t.shape)
        out: dict[str, Any] = {
            "name": t.name,
            "data_type": TRITON_TYPES[t.datatype],
            "dims": dims or [1],
        }
        if batched and not dims:
            out["reshape"] = {"shape": []}
        return out

    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": max_batch_size if batched else 0,
        "input": [entry(t) for t in inputs],
        "output": [entry(t) for t in outputs],
    }


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed config.pbtxt of a model folder, or {} when it has none."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return {}
    return parse_config(path.read_text())


def read_metadata(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The rootml.json of a model folder, or None when it has none. ModelError if unreadable."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(metadata, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return metadata


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="~tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_onnx_model(
    repo: str | os.PathLike,
    name: str,
    onnx_model: str | os.PathLike | bytes,
    metadata: dict[str, Any] | None = None,
    *,
    config: dict[str, Any] | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> int:
    """Add an ONNX model (path or bytes) as a new version of `name` in `repo`; return the version.

    The model is validated first (`validate_onnx`). config.pbtxt is regenerated from the graph,
    keeping batching and version policy from `config` or else from the existing config.pbtxt;
    `metadata` (a JSON object) becomes rootml.json. The version folder appears last, in one
    rename, so a server scanning the repository never sees half a version, and an existing
    version is never overwritten. Raises ModelError.
    """
    proto = validate_onnx(onnx_model)
    data = (
        proto.SerializeToString()
        if isinstance(onnx_model, (str, os.PathLike))
        else bytes(onnx_model)
    )
    folder = model_dir(repo, name)
    folder.mkdir(parents=True, exist_ok=True)
    inputs, outputs = graph_io(proto)
    previous = config if config is not None else read_config(folder)
    if previous.get("max_batch_size"):
        max_batch_size = int(previous["max_batch_size"])
    new_config = make_config(name, inputs, outputs, max_batch_size)
    new_config.update({k: previous[k] for k in _KEPT_CONFIG_KEYS if k in previous})
    _write_atomic(folder / CONFIG_FILE, format_config(new_config).encode())
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ModelError(f"metadata for {name!r} must be a JSON object")
        metadata = {"format": 1, **metadata, "name": name}
        _write_atomic(folder / METADATA_FILE, json.dumps(metadata, indent=2).encode())
    staging = Path(tempfile.mkdtemp(dir=folder, prefix="~version-"))
    try:
        (staging / MODEL_FILE).write_bytes(data)
        for _ in range(100):
            version = next_version(repo, name)
            try:
                os.rename(staging, folder / str(version))
                return version
            except OSError:
                # Another writer took this number first (non-empty target); try the next one.
                if not (folder / str(version)).exists():
                    raise
        raise ModelError(f"cannot claim a new version folder in {folder}")
    finally:
        if staging.exists():
            (staging / MODEL_FILE).unlink(missing_ok=True)
            staging.rmdir()


def session_options(threads: int = 1):
    """onnxruntime SessionOptions using `threads` intra-op threads and no inter-op pool."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def providers() -> list[str]:
    """CUDA first when this onnxruntime has it, CPU always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def load_model(
    repo: str | os.PathLike, name: str, version: int | None = None, threads: int = 1
) -> LoadedModel:
    """Load one version (default: the highest) of model `name` from `repo`.

    The ONNX bytes are validated and handed to onnxruntime from memory, so onnxruntime never
    resolves a path itself. Raises ModelError (unknown model/version, unsafe file, bad config).
    """
    import onnxruntime as ort

    folder = model_dir(repo, name)
    versions = list_versions(repo, name)
    if not versions:
        raise ModelError(f"model {name!r} has no version with a {MODEL_FILE} in {folder}")
    version = versions[-1] if version is None else int(version)
    if version not in versions:
        raise ModelError(f"model {name!r} has no version {version} (versions: {versions})")
    path = folder / str(version) / MODEL_FILE
    data = _inside(path, folder).read_bytes()
    proto = validate_onnx(data)
    inputs, outputs = graph_io(proto)
    config = read_config(folder) or make_config(name, inputs, outputs)
    try:
        session = ort.InferenceSession(
            data, sess_options=session_options(threads), providers=providers()
        )
    except Exception as err:
        raise ModelError(f"onnxruntime cannot load {path}: {err}") from err
    return LoadedModel(name, version, path, session, inputs, outputs, config, read_metadata(folder))
