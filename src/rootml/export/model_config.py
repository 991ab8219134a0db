"""Triton's model configuration (config.pbtxt) as rootml reads, checks and writes it.

A config belongs to the model, not to one version: Triton serves every version of a model with
one signature (inputs and outputs) and one set of settings (max_batch_size, dynamic_batching,
version_policy). So a version whose graph does not fit the config is refused, never written over
it (`check_signature`), and every config is checked whole before it is written (`validate_config`)
with the same rules the server applies when it loads one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rootml import defaults
from rootml.errors import ModelError
from rootml.export.pbtxt import parse_config

CONFIG_FILE = "config.pbtxt"
# The file of each version folder, unless config.pbtxt names another (default_model_filename).
MODEL_FILE = "model.onnx"
DEFAULT_MAX_BATCH_SIZE = defaults.MAX_BATCH_SIZE
# Per-model settings that a config made from a graph takes over from a given config.
KEPT_CONFIG_KEYS = (
    "dynamic_batching",
    "version_policy",
    "instance_group",
    "parameters",
    "default_model_filename",
)
# Triton's instance group kinds. KIND_MODEL (the backend decides) is placed as KIND_AUTO.
INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

# V2 datatype -> Triton config data_type.
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}
_V2_TYPES = {triton: v2 for v2, triton in TRITON_TYPES.items()}
# Files of a version folder that are not its model.
_RESERVED_NAMES = ("rootml.json", "config.pbtxt")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: V2 datatype and shape, -1 for a variable dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


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
    and dims are the full shapes. The version policy is ``all``: rootml's default, written out
    because Triton's is the latest version only, so both serve the same versions.
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
        "version_policy": {"all": {}},
    }


def model_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    base: dict[str, Any],
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> dict[str, Any]:
    """`make_config` of a graph with max_batch_size and the KEPT_CONFIG_KEYS settings of `base`
    (a config given by the user, or {}); `max_batch_size` when `base` has none."""
    if "max_batch_size" in base:
        max_batch_size = _int(base["max_batch_size"], "max_batch_size")
    config = make_config(name, inputs, outputs, max_batch_size)
    config.update({k: base[k] for k in KEPT_CONFIG_KEYS if k in base})
    return config


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed config.pbtxt of a model folder, or {} when it has none. ModelError when it
    cannot be read or parsed."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"cannot read {path}: {err}") from err
    try:
        return parse_config(text)
    except ModelError as err:
        raise ModelError(f"{path}: {err}") from None


# Checks ------------------------------------------------------------------------------------------
def _int(value: Any, what: str, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ModelError(f"config.pbtxt: {what} must be an integer >= {low}, not {value!r}")
    return value


def batching_settings(
    config: dict[str, Any], metadata: dict[str, Any] | None = None
) -> tuple[float, int, list[int]] | None:
    """(max delay in s, max queue size, preferred batch sizes) when config.pbtxt (else the
    version's rootml.json) turns dynamic batching on, else None. ModelError for bad settings."""
    settings = config.get("dynamic_batching")
    if settings is None and metadata:
        settings = metadata.get("dynamic_batching")
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise ModelError("config.pbtxt: dynamic_batching must be a message { ... }")
    max_batch_size = _int(config.get("max_batch_size", 0), "max_batch_size")
    if max_batch_size < 1:
        raise ModelError("config.pbtxt: dynamic batching needs max_batch_size > 0")
    delay_us = settings.get("max_queue_delay_microseconds", 0)
    if not isinstance(delay_us, (int, float)) or isinstance(delay_us, bool) or not delay_us >= 0:
        raise ModelError(f"config.pbtxt: max_queue_delay_microseconds {delay_us!r} is not >= 0")
    policy = settings.get("default_queue_policy") or {}
    if not isinstance(policy, dict):
        raise ModelError("config.pbtxt: default_queue_policy must be a message { ... }")
    queue = _int(
        settings.get("max_queue_size") or policy.get("max_queue_size", 0), "max_queue_size"
    )
    preferred = settings.get("preferred_batch_size") or []
    for size in preferred:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= max_batch_size:
            raise ModelError(
                f"config.pbtxt: preferred_batch_size {preferred} must hold sizes from 1 to "
                f"max_batch_size {max_batch_size}"
            )
    return float(delay_us) / 1e6, queue, list(preferred)


def model_file_name(config: dict[str, Any]) -> str:
    """The file name of a version's model in its folder: config.pbtxt's default_model_filename
    (Triton's), else model.onnx. ModelError for a name that is not a plain file name."""
    name = config.get("default_model_filename", MODEL_FILE)
    if name == "":  # Triton reads an empty string as unset
        return MODEL_FILE
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or name in _RESERVED_NAMES:
        raise ModelError(
            f"config.pbtxt: default_model_filename {name!r} must be a plain file name "
            f"(letters, digits, '_', '.', '-'), not one of {list(_RESERVED_NAMES)}"
        )
    return name


def instance_groups(config: dict[str, Any]) -> list[dict[str, Any]]:
    """config.pbtxt's instance_group as Triton reads it: each group {"kind", "count", "gpus"}
    with KIND_AUTO and count 1 where unset (a count below 1 counts as 1, as in Triton); [] when
    the config has none. ModelError for an unknown kind, GPU ids that are not integers >= 0, or
    GPUs given to a KIND_CPU group (Triton refuses those too)."""
    groups = config.get("instance_group") or []
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ModelError("config.pbtxt: instance_group must be messages [{ kind: ... }, ...]")
    out = []
    for i, group in enumerate(groups):
        what = f"config.pbtxt: instance_group {group.get('name', i)!r}"
        kind = group.get("kind", "KIND_AUTO")
        if kind not in INSTANCE_KINDS:
            raise ModelError(f"{what}: unknown kind {kind!r}; one of {list(INSTANCE_KINDS)}")
        count = group.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool):
            raise ModelError(f"{what}: count must be an integer, not {count!r}")
        gpus = group.get("gpus", [])
        for gpu in gpus if isinstance(gpus, list) else [None]:
            _int(gpu, f"instance_group {group.get('name', i)!r} gpus")
        if kind == "KIND_CPU" and gpus:
            raise ModelError(f"{what}: kind KIND_CPU but gpus {gpus} given")
        out.append({"kind": kind, "count": max(1, count), "gpus": list(gpus)})
    return out


def select_versions(available: list[int], config: dict[str, Any]) -> list[int]:
    """The versions to serve under config.pbtxt's version_policy (Triton's); all when it has none.
    ModelError for a policy Triton would not take."""
    policy = config.get("version_policy")
    if not policy or "all" in policy:
        return list(available)
    if not isinstance(policy, dict):
        raise ModelError("config.pbtxt: version_policy must be a message { ... }")
    if "latest" in policy:
        latest = policy["latest"] or {}
        n = _int(
            latest.get("num_versions", 1) if isinstance(latest, dict) else None, "num_versions", 1
        )
        return list(available[-n:])
    if "specific" in policy:
        specific = policy["specific"] or {}
        versions = specific.get("versions", []) if isinstance(specific, dict) else None
        if not isinstance(versions, list):
            raise ModelError("config.pbtxt: version_policy specific needs versions: [...]")
        wanted = {_int(v, "a specific version", 1) for v in versions}
        return [v for v in available if v in wanted]
    raise ModelError(f"config.pbtxt: unknown version_policy {policy}")


def validate_config(config: Any) -> dict[str, Any]:
    """Check a config dict as the server would when loading it; return it. Raises ModelError
    naming the setting (max_batch_size, dims, data types, dynamic batching, version policy,
    instance groups, default_model_filename)."""
    if not isinstance(config, dict):
        raise ModelError("config.pbtxt must be a message of fields")
    _int(config.get("max_batch_size", 0), "max_batch_size")
    for key in ("input", "output"):
        entries = config.get(key, [])
        if not isinstance(entries, list):
            raise ModelError(f"config.pbtxt: {key} must be messages {{ ... }}")
        for entry in entries:
            _tensor(entry, key, config)
    batching_settings(config)
    select_versions([], config)
    instance_groups(config)
    model_file_name(config)
    return config


def _tensor(entry: Any, key: str, config: dict[str, Any]) -> TensorSpec:
    """A config input/output entry as a TensorSpec of its full shape (the batch dim first when
    max_batch_size > 0; `reshape` is the shape the graph sees)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ModelError(f"config.pbtxt: each {key} needs a name")
    what = f"config.pbtxt: {key} {entry['name']!r}"
    datatype = _V2_TYPES.get(entry.get("data_type"))
    if datatype is None:
        raise ModelError(f"{what}: unknown data_type {entry.get('data_type')!r}")
    dims = entry.get("dims")
    reshape = entry.get("reshape")
    if reshape is not None:
        dims = reshape.get("shape", []) if isinstance(reshape, dict) else None
    if not isinstance(dims, list):
        raise ModelError(f"{what}: dims must be a list of integers")
    for dim in dims:
        _int(dim, f"{key} {entry['name']!r} dims", -1)
    batch = [-1] if config.get("max_batch_size", 0) else []
    return TensorSpec(entry["name"], datatype, tuple(batch + dims))


def _differences(declared: list[TensorSpec], graph: list[TensorSpec], key: str) -> list[str]:
    want = {t.name: t for t in declared}
    have = {t.name: t for t in graph}
    diffs = [f"{key} {n!r} is not in config.pbtxt" for n in have if n not in want]
    diffs += [f"config.pbtxt {key} {n!r} is not in the graph" for n in want if n not in have]
    for name in [n for n in have if n in want]:
        a, b = want[name], have[name]
        fits = len(a.shape) == len(b.shape) and all(
            x == y or -1 in (x, y) for x, y in zip(a.shape, b.shape)
        )
        if a.datatype != b.datatype or not fits:
            diffs.append(
                f"{key} {name!r} is {b.datatype} {list(b.shape)}, config.pbtxt says "
                f"{a.datatype} {list(a.shape)}"
            )
    return diffs


def check_signature(
    config: dict[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec], what: str
) -> None:
    """Raise ModelError when a graph's inputs/outputs do not fit those `config` declares (names,
    datatypes, ranks; -1 fits any size). A config that declares none (Triton's auto-complete)
    fits every graph. `what` names the graph in the message ("version 3 of model 'm'")."""
    diffs = []
    for key, graph in (("input", inputs), ("output", outputs)):
        if config.get(key):
            declared = [_tensor(entry, key, config) for entry in config[key]]
            diffs += _differences(declared, graph, key)
    if diffs:
        raise ModelError(
            f"{what} does not fit the model's config.pbtxt ({'; '.join(diffs)}): Triton serves "
            "one signature per model, so a graph with other inputs or outputs needs a model "
            "name of its own"
        )
