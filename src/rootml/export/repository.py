"""The model repository in Triton's layout, and the loader the server uses.

```
<repo>/<name>/config.pbtxt          Triton config of the model: signature, batching, versions
<repo>/<name>/<N>/model.onnx        numeric version folders, single-file ONNX; highest is the default
                                    (another name when config.pbtxt's default_model_filename says)
<repo>/<name>/<N>/rootml.json       rootml's metadata of that version (optional): Specs, layout,
                                    normalisation (folded or not), labels, training record;
                                    "regression" (targets, loss) for a regression model, whose
                                    outputs are in the targets' units; "folds" (expression,
                                    n_folds, input "fold") for a k-fold ensemble
```
Each version is scored with its own rootml.json. A model-level ``<name>/rootml.json`` (written by
rootml before versions had their own) still serves as the metadata of versions without one, with
a deprecation note; adding a version to such a model first moves it into those versions.

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
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rootml.errors import ModelError
from rootml.export import execution
from rootml.export.metadata import METADATA_FILE as METADATA_FILE
from rootml.export.metadata import check_metadata as check_metadata
from rootml.export.metadata import read_metadata as read_metadata
from rootml.export.metadata import version_metadata as version_metadata
from rootml.export.model_config import CONFIG_FILE as CONFIG_FILE
from rootml.export.model_config import DEFAULT_MAX_BATCH_SIZE as DEFAULT_MAX_BATCH_SIZE
from rootml.export.model_config import MODEL_FILE as MODEL_FILE
from rootml.export.model_config import TRITON_TYPES as TRITON_TYPES
from rootml.export.model_config import (
    TensorSpec,
    check_signature,
    make_config,
    model_config,
    model_file_name,
    read_config,
    validate_config,
)
from rootml.export.onnx_file import graph_io as graph_io
from rootml.export.onnx_file import inside
from rootml.export.onnx_file import validate_onnx as validate_onnx
from rootml.export.pbtxt import format_config

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 128
# Temporary files and folders of a change in progress; no model or version name starts so.
_STAGING = "~tmp-"

_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[0-9]+")


@dataclass
class LoadedModel:
    """One version of a model, ready to run: its onnxruntime sessions and its metadata.

    `sessions` (one per GPU instance, or the one CPU session; `session` is the first) run on
    `devices` ("cpu", "cuda:N"); `planned` is where config.pbtxt's instance groups were to be
    placed (rootml.export.execution.plan_groups), `config["instance_group"]` where they run."""

    name: str
    version: int
    path: Path
    session: Any  # onnxruntime.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None  # rootml.json, None for plain ONNX models
    sessions: list[Any] = field(default_factory=list)
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    planned: tuple = ()

    def __post_init__(self):
        self.sessions = self.sessions or [self.session]

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


def model_dir(repo: str | os.PathLike, name: str) -> Path:
    """The folder of model `name` in `repo`; ModelError if the name is unsafe or escapes `repo`."""
    repo = Path(repo)
    path = repo / check_model_name(name)
    inside(path, repo)
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


def model_file(folder: str | os.PathLike) -> str:
    """The file name of the versions' model in model folder `folder`: its config.pbtxt's
    default_model_filename, else model.onnx. ModelError for a config that cannot be read."""
    return model_file_name(read_config(folder))


def list_versions(repo: str | os.PathLike, name: str) -> list[int]:
    """Versions of model `name` that hold its model file (`model_file`), ascending. A model
    whose config.pbtxt cannot be read is listed by model.onnx (loading it says what is wrong)."""
    folder = model_dir(repo, name)
    if not folder.is_dir():
        return []
    try:
        filename = model_file(folder)
    except ModelError:
        filename = MODEL_FILE
    return sorted(
        int(entry.name)
        for entry in folder.iterdir()
        if _VERSION.fullmatch(entry.name) and (entry / filename).is_file()
    )


def next_version(repo: str | os.PathLike, name: str) -> int:
    """One more than the highest numeric version folder (with or without a model), from 1."""
    folder = model_dir(repo, name)
    return _next_number(folder) if folder.is_dir() else 1


def _next_number(folder: Path) -> int:
    return max([int(e.name) for e in folder.iterdir() if _VERSION.fullmatch(e.name)], default=0) + 1


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
    filename = model_file_name(new_config if new_config is not None else read_config(folder))
    version = _write_version(Path(repo), folder, onnx_bytes, metadata_bytes, new_config, filename)
    log.info("added %s version %d", name, version)
    return version


def _metadata_beside(path: Path) -> dict[str, Any] | None:
    beside = path.parent / METADATA_FILE
    if not beside.is_file() or path.name not in (MODEL_FILE, _named_model_file(path)):
        return None
    log.info("taking %s as the metadata of %s", beside, path)
    return read_metadata(path.parent)


def _named_model_file(path: Path) -> str | None:
    """The model file name of the model folder above version folder `path.parent`, if any."""
    try:
        return model_file(path.parent.parent) if path.parent.name.isdigit() else None
    except ModelError:
        return None


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
    versions = list_versions(repo, name)
    if versions and model_file_name(new) != model_file(folder):
        raise ModelError(
            f"the config given with model {name!r} names its model file "
            f"{model_file_name(new)!r}, its versions {versions} hold {model_file(folder)!r}: "
            "they would no longer be found"
        )
    if current:
        check_signature(current, inputs, outputs, f"the new version of model {name!r}")
        return None if given is None or new == current else new
    if versions:  # a model without config.pbtxt: its newest version has the signature
        newest = validate_onnx(folder / str(versions[-1]) / model_file(folder), folder)
        signature = make_config(name, *graph_io(newest), new["max_batch_size"] or max_batch_size)
        check_signature(signature, inputs, outputs, f"the new version of model {name!r}")
    return new


def _write_version(
    repo: Path,
    folder: Path,
    onnx_bytes: bytes,
    metadata: bytes | None,
    config: dict[str, Any] | None,
    filename: str = MODEL_FILE,
) -> int:
    """Write a checked version (and config) into the repository, its model as `filename`;
    return its number."""
    repo.mkdir(parents=True, exist_ok=True)
    if not folder.exists():
        # A new model appears whole: config.pbtxt and version 1 in one rename.
        staging = _staging_folder(repo)
        try:
            _fill_version(staging / "1", onnx_bytes, metadata, filename)
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
        _fill_version(staging, onnx_bytes, metadata, filename)
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


def _fill_version(folder: Path, onnx_bytes: bytes, metadata: bytes | None, filename: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / filename).write_bytes(onnx_bytes)
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


def load_model(
    repo: str | os.PathLike,
    name: str,
    version: int | None = None,
    threads: int = 1,
    cached: LoadedModel | None = None,
    device: str = "auto",
) -> LoadedModel:
    """Load one version (default: the highest) of model `name` from `repo`.

    The ONNX bytes are validated and handed to onnxruntime from memory, so onnxruntime never
    resolves a path itself. The graph must fit the model's config.pbtxt and the version's
    rootml.json must pass `check_metadata`. The sessions are placed as config.pbtxt's
    instance_group says, `device` ("auto", "cpu", "cuda", "cuda:N") for groups that do not say
    (rootml.export.execution; a GPU that cannot be had falls back to the CPU with a warning).
    `cached`: this version loaded before from an unchanged model file, whose sessions are reused
    when they are placed as now (config and metadata are read anew).
    Raises ModelError (unknown model/version, unsafe file, bad config or metadata).
    """
    folder = model_dir(repo, name)
    config = read_config(folder)
    filename = model_file_name(config)
    versions = list_versions(repo, name)
    if not versions:
        raise ModelError(f"model {name!r} has no version with a {filename} in {folder}")
    version = versions[-1] if version is None else int(version)
    if version not in versions:
        raise ModelError(f"model {name!r} has no version {version} (versions: {versions})")
    what = f"version {version} of model {name!r}"
    path = folder / str(version) / filename
    metadata = version_metadata(folder, version)
    check_metadata(metadata, f"rootml.json of {what}")
    if cached is not None:
        inputs, outputs = cached.inputs, cached.outputs
    else:
        data = inside(path, folder).read_bytes()
        inputs, outputs = graph_io(validate_onnx(data))
    if config:
        validate_config(config)
        check_signature(config, inputs, outputs, what)
    else:
        config = make_config(name, inputs, outputs)
    planned = execution.plan_groups(config, device, execution.available_gpus())
    if cached is not None and cached.planned == planned:
        sessions, devices, groups = cached.sessions, cached.devices, cached.config["instance_group"]
    else:
        if cached is not None:  # placed anew: the same file, read again
            data = inside(path, folder).read_bytes()
            validate_onnx(data)
        try:
            sessions, devices, groups = execution.create_sessions(
                data, planned[0], threads, what, planned[1]
            )
        except Exception as err:
            raise ModelError(f"onnxruntime cannot load {path}: {err}") from err
    # Resolved as Triton's config endpoint shows them: named, kinds placed, GPUs listed.
    config = {
        **config,
        "instance_group": [{"name": f"{name}_{i}", **g} for i, g in enumerate(groups)],
    }
    return LoadedModel(
        name, version, path, sessions[0], inputs, outputs, config, metadata,
        sessions=sessions, devices=devices, planned=planned,
    )  # fmt: skip
