"""The model repository in Triton's layout, and the loader the server uses.

```
<repo>/<name>/config.pbtxt          Triton config of the model: signature, batching, versions
<repo>/<name>/<N>/model.onnx        numeric version folders, single-file ONNX; highest is the default
<repo>/<name>/<N>/rootml.json       rootml's metadata of that version (optional): Specs, layout,
                                    normalisation (folded or not), labels, training record
```
Each version is scored with its own rootml.json. A model-level ``<name>/rootml.json``, written by
rootml before 0.2, still serves as the metadata of versions without their own (with a deprecation
note); adding a version to such a model first moves it into those versions.

Every change is checked whole (ONNX, rootml.json, config.pbtxt, the new graph against the model's
signature) before anything is written, then written to a temporary folder and renamed into place:
a refused change leaves the repository byte for byte as it was, and a reader (a polling server)
sees a version complete or not at all.

Nothing here reads outside the repository folder: model names are plain names, never paths,
symlinks that resolve elsewhere are refused, and ONNX files that reference external data are
refused before onnxruntime sees them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from rootml.errors import ModelError, RootmlError
from rootml.export.model_config import CONFIG_FILE as CONFIG_FILE
from rootml.export.model_config import DEFAULT_MAX_BATCH_SIZE as DEFAULT_MAX_BATCH_SIZE
from rootml.export.model_config import TRITON_TYPES as TRITON_TYPES
from rootml.export.model_config import (
    TensorSpec,
    check_signature,
    make_config,
    model_config,
    read_config,
    validate_config,
)
from rootml.export.pbtxt import format_config

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
METADATA_FILE = "rootml.json"
MAX_NAME_LENGTH = 128
# Bounds on what a rootml.json may ask the server to build per entry: a pad length (items kept
# of a jagged branch) or fixed-array width, and values per entry over all inputs. Real models use
# tens to a few thousand; a request padded to 1e9 columns would exhaust memory.
MAX_PAD_LENGTH = 1 << 16
MAX_ROW_VALUES = 1 << 20
# Temporary files and folders of a change in progress; no model or version name starts so.
_STAGING = "~tmp-"

_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[0-9]+")
_LEGACY_NOTED: set[Path] = set()

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


def valid_model_name(name: Any) -> bool:
    """Whether `name` is a safe model name: 1 to 128 of ``[A-Za-z0-9_.-]``, not starting with
    '-' (it would read as an option in a shell), not "." or ".."."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_LENGTH
        and _NAME.fullmatch(name) is not None
        and name not in (".", "..")
    )


def check_model_name(name: Any) -> str:
    """Return `name` if `valid_model_name`, else raise ModelError."""
    if not valid_model_name(name):
        shown = name[:40] + "..." if isinstance(name, str) and len(name) > 43 else name
        raise ModelError(
            f"invalid model name {shown!r}: use up to {MAX_NAME_LENGTH} letters, digits, '_', "
            "'.', '-', not starting with '-'"
        )
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
        if not valid_model_name(entry.name) or not entry.is_dir():
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
    return _next_number(folder) if folder.is_dir() else 1


def _next_number(folder: Path) -> int:
    return max([int(e.name) for e in folder.iterdir() if _VERSION.fullmatch(e.name)], default=0) + 1


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
    return TensorSpec(value.name, _ONNX_TYPES[tensor.elem_type], shape)


def graph_io(proto: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs (initializers excluded) and outputs of an ONNX graph."""
    stored = {t.name for t in proto.graph.initializer}
    inputs = [_value_spec(v) for v in proto.graph.input if v.name not in stored]
    return inputs, [_value_spec(v) for v in proto.graph.output]


# Metadata (rootml.json) ---------------------------------------------------------------------------
def read_metadata(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The rootml.json in `folder` (a version folder), or None when it has none. ModelError if
    unreadable or not a JSON object."""
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


def version_metadata(folder: str | os.PathLike, version: int) -> dict[str, Any] | None:
    """The rootml.json of `version` of the model in `folder`: the version's own, else a
    model-level one (repositories written before per-version metadata; noted once in the log as
    deprecated), else None."""
    folder = Path(folder)
    own = read_metadata(folder / str(version))
    if own is not None:
        return own
    legacy = read_metadata(folder)
    if legacy is not None and folder not in _LEGACY_NOTED:
        _LEGACY_NOTED.add(folder)
        log.warning(
            "%s: a model-level %s is deprecated (each version has its own now); it is taken as "
            "the metadata of the versions without one, and moved into them when a version is "
            "added",
            folder / METADATA_FILE,
            METADATA_FILE,
        )
    return legacy


def check_metadata(metadata: Any, what: str = METADATA_FILE) -> None:
    """Check a rootml.json (None: none) as the server uses it; ModelError naming the key.

    The format, layout, normalisation and pad value; its Specs must load and ask for at most
    MAX_PAD_LENGTH values per branch and entry (pad lengths, array widths), MAX_ROW_VALUES in all.
    """
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise ModelError(f"{what}: expected a JSON object")
    if metadata.get("format", 1) != 1:
        raise ModelError(f"{what}: unknown format {metadata.get('format')!r} (rootml reads 1)")
    if metadata.get("layout") not in (None, "flat", "collection"):
        raise ModelError(f"{what}: layout {metadata['layout']!r} is not 'flat' or 'collection'")
    normalization = metadata.get("normalization") or {}
    if not isinstance(normalization, dict) or normalization.get("method") not in (
        None,
        "standard",
        "minmax",
    ):
        raise ModelError(
            f"{what}: normalization must be {{'method': 'standard'|'minmax'|null, 'folded': "
            f"bool}}, not {normalization!r}"
        )
    pad_value = metadata.get("pad_value", 0.0)
    if pad_value is not None and (
        not isinstance(pad_value, (int, float)) or not math.isfinite(pad_value)
    ):
        raise ModelError(f"{what}: pad_value {pad_value!r} is not a finite number")
    if metadata.get("specs") is not None:
        _check_specs(metadata["specs"], what)


def _check_specs(data: Any, what: str) -> None:
    from rootml.transforms import Specs

    try:
        specs = Specs.from_dict(data)
    except (RootmlError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelError(f"{what}: cannot read its specs: {err!r}") from None
    total = 0
    for name, spec in specs.branches.items():
        if spec.kind not in ("flat", "fixed", "jagged"):
            raise ModelError(f"{what}: branch {name!r} has unknown kind {spec.kind!r}")
        size = specs.pad.get(name) if spec.kind == "jagged" else spec.width
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_PAD_LENGTH:
            word = "pad length" if spec.kind == "jagged" else "width"
            raise ModelError(
                f"{what}: branch {name!r} has {word} {size!r}; rootml takes 1 to "
                f"{MAX_PAD_LENGTH} values per branch and entry"
            )
        total += size
    if total > MAX_ROW_VALUES:
        raise ModelError(
            f"{what}: its specs make {total} values per entry, more than {MAX_ROW_VALUES}"
        )


# Adding a version ---------------------------------------------------------------------------------
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

    metadata: the version's rootml.json (a JSON object); None takes the rootml.json next to a
    model.onnx path (a version folder of a repository), if any, else the version has none.
    config: a config.pbtxt dict given with the model (an upload's): the max_batch_size and
    KEPT_CONFIG_KEYS settings it sets apply to the whole model, the others stay as the model's
    config.pbtxt has them. Without one a new model's config.pbtxt is made from the graph with
    `max_batch_size`, and an existing model's stays byte for byte as it is.

    Everything is checked before anything is written: the ONNX file (`validate_onnx`), the
    rootml.json (`check_metadata`), the config (`validate_config`), and the graph against the
    model's signature (its config.pbtxt, or its newest version when it has none): Triton serves
    one signature per model. The version folder (or a new model's folder) is written aside and
    renamed into place; an existing version is never overwritten. Raises ModelError, and then
    the repository is unchanged.
    """
    folder = model_dir(repo, name)
    proto = validate_onnx(onnx_model)
    data = bytes(onnx_model) if isinstance(onnx_model, (bytes, bytearray, memoryview)) else None
    inputs, outputs = graph_io(proto)
    if metadata is None and data is None:
        metadata = _metadata_beside(Path(onnx_model))
    metadata_bytes = None
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise ModelError(f"metadata for {name!r} must be a JSON object")
        metadata = {"format": 1, **metadata, "name": name}
        check_metadata(metadata, f"rootml.json for model {name!r}")
        try:
            metadata_bytes = json.dumps(metadata, indent=2, allow_nan=False).encode()
        except (TypeError, ValueError) as err:
            raise ModelError(f"rootml.json for model {name!r} is not JSON: {err}") from err
    new_config = _config_change(repo, name, inputs, outputs, config, max_batch_size)
    onnx_bytes = proto.SerializeToString() if data is None else data
    version = _write_version(Path(repo), folder, onnx_bytes, metadata_bytes, new_config)
    log.info("added %s version %d", name, version)
    return version


def _metadata_beside(path: Path) -> dict[str, Any] | None:
    beside = path.parent / METADATA_FILE
    if path.name != MODEL_FILE or not beside.is_file():
        return None
    log.info("taking %s as the metadata of %s", beside, path)
    return read_metadata(path.parent)


def _config_change(
    repo: str | os.PathLike,
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    given: dict[str, Any] | None,
    max_batch_size: int,
) -> dict[str, Any] | None:
    """The config.pbtxt to write with a new version, None to keep the model's as it is.
    ModelError when the given config or the graph does not fit."""
    folder = model_dir(repo, name)
    current = read_config(folder)
    new = validate_config(
        model_config(name, inputs, outputs, {**current, **(given or {})}, max_batch_size)
    )
    if given:  # the inputs and outputs it declares, if any, read with the batch dim it gets
        declared = {**given, "max_batch_size": new["max_batch_size"]}
        check_signature(declared, inputs, outputs, f"the model {name!r} given with a config")
    if current:
        check_signature(current, inputs, outputs, f"the new version of model {name!r}")
        return None if given is None or new == current else new
    versions = list_versions(repo, name)
    if versions:  # a model without config.pbtxt: its newest version has the signature
        newest = validate_onnx(folder / str(versions[-1]) / MODEL_FILE, folder)
        signature = make_config(name, *graph_io(newest), new["max_batch_size"] or max_batch_size)
        check_signature(signature, inputs, outputs, f"the new version of model {name!r}")
    return new


def _write_version(
    repo: Path,
    folder: Path,
    onnx_bytes: bytes,
    metadata: bytes | None,
    config: dict[str, Any] | None,
) -> int:
    """Write a checked version (and config) into the repository; return its number."""
    repo.mkdir(parents=True, exist_ok=True)
    if not folder.exists():
        # A new model appears whole: config.pbtxt and version 1 in one rename.
        staging = _staging_folder(repo)
        try:
            _fill_version(staging / "1", onnx_bytes, metadata)
            (staging / CONFIG_FILE).write_text(format_config(config))
            try:
                os.rename(staging, folder)
            except OSError as err:
                raise ModelError(f"model folder {folder} appeared while adding it: {err}") from err
            return 1
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _move_legacy_metadata(folder)
    staging = _staging_folder(folder)
    try:
        _fill_version(staging, onnx_bytes, metadata)
        version = _claim_version(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if config is not None:
        _write_atomic(folder / CONFIG_FILE, format_config(config).encode())
        log.info("%s: replaced by the config given with version %d", folder / CONFIG_FILE, version)
    return version


def _staging_folder(parent: Path) -> Path:
    path = Path(tempfile.mkdtemp(dir=parent, prefix=_STAGING))
    path.chmod(0o755)  # mkdtemp's 0o700 would hide the model from other users (Triton's)
    return path


def _fill_version(folder: Path, onnx_bytes: bytes, metadata: bytes | None) -> None:
    folder.mkdir(exist_ok=True)
    (folder / MODEL_FILE).write_bytes(onnx_bytes)
    if metadata is not None:
        (folder / METADATA_FILE).write_bytes(metadata)


def _claim_version(staging: Path, folder: Path) -> int:
    """Rename `staging` to the next free version number of `folder`; return it."""
    for _ in range(100):
        version = _next_number(folder)
        try:
            os.rename(staging, folder / str(version))
            return version
        except OSError:
            # Another writer took this number first (non-empty target); try the next one.
            if not (folder / str(version)).exists():
                raise
    raise ModelError(f"cannot claim a new version folder in {folder}")


def _move_legacy_metadata(folder: Path) -> None:
    """Give each version without a rootml.json a copy of the model-level one (what it was
    served with), then remove that: a version added next must not inherit it."""
    legacy = folder / METADATA_FILE
    if not legacy.is_file():
        return
    data = legacy.read_bytes()
    moved = [
        entry.name
        for entry in sorted(folder.iterdir())
        if _VERSION.fullmatch(entry.name) and not (entry / METADATA_FILE).exists()
    ]
    for name in moved:
        _write_atomic(folder / name / METADATA_FILE, data)
    legacy.unlink()
    log.warning("moved the model-level %s into versions %s of %s", METADATA_FILE, moved, folder)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_STAGING)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide it from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    repo: str | os.PathLike,
    name: str,
    version: int | None = None,
    threads: int = 1,
    cached: LoadedModel | None = None,
) -> LoadedModel:
    """Load one version (default: the highest) of model `name` from `repo`.

    The ONNX bytes are validated and handed to onnxruntime from memory, so onnxruntime never
    resolves a path itself. The graph must fit the model's config.pbtxt and the version's
    rootml.json must pass `check_metadata`. `cached`: this version loaded before from an
    unchanged model.onnx, whose session is reused (config and metadata are read anew).
    Raises ModelError (unknown model/version, unsafe file, bad config or metadata).
    """
    folder = model_dir(repo, name)
    versions = list_versions(repo, name)
    if not versions:
        raise ModelError(f"model {name!r} has no version with a {MODEL_FILE} in {folder}")
    version = versions[-1] if version is None else int(version)
    if version not in versions:
        raise ModelError(f"model {name!r} has no version {version} (versions: {versions})")
    what = f"version {version} of model {name!r}"
    path = folder / str(version) / MODEL_FILE
    config = read_config(folder)
    metadata = version_metadata(folder, version)
    check_metadata(metadata, f"rootml.json of {what}")
    if cached is not None:
        inputs, outputs, data = cached.inputs, cached.outputs, None
    else:
        data = _inside(path, folder).read_bytes()
        inputs, outputs = graph_io(validate_onnx(data))
    if config:
        validate_config(config)
        check_signature(config, inputs, outputs, what)
    else:
        config = make_config(name, inputs, outputs)
    if data is None:
        session = cached.session
    else:
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(
                data, sess_options=session_options(threads), providers=providers()
            )
        except Exception as err:
            raise ModelError(f"onnxruntime cannot load {path}: {err}") from err
    return LoadedModel(name, version, path, session, inputs, outputs, config, metadata)
