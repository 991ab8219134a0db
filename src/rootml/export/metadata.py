"""rootml.json: rootml's metadata of one model version (Specs, layout, normalisation, labels,
training record). Its writer (`run_metadata`), its reader `read_metadata` (with the fallback for
repositories written before per-version metadata) and its check before it is stored or served
live here, with the key names (`MetadataKey`); rootml.export.preprocessing reads what training
applied from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from rootml._jsonsafe import finite_json
from rootml.errors import ModelError, RootmlError

log = logging.getLogger(__name__)

METADATA_FILE = "rootml.json"
FORMAT = 1


class MetadataKey:
    """Keys of rootml.json. LAYOUT "flat" (default) or "collection"; COLLECTIONS (collection
    layout): name -> {"branches": [...], "length": N}; NORMALIZATION: {METHOD: "standard",
    "minmax" or null, FOLDED: bool}; PAD_VALUE (0.0); SORT_BY and NAN_POLICY (top-level, else
    in TRAINING's PARAMS); SPECS, FEATURE_NAMES, LABELS, TREE, BRANCHES, TRAINING (run,
    checkpoint, epoch, metrics, params, summary; of a k-fold ensemble: run, params and one
    record per fold), VERSIONS, PARITY; REGRESSION (a regression model: targets, loss); FOLDS
    (a k-fold ensemble: folds, n_folds, expression, input: rootml.export.folds)."""

    FORMAT = "format"
    LAYOUT = "layout"
    SPECS = "specs"
    NORMALIZATION = "normalization"
    METHOD = "method"
    FOLDED = "folded"
    FEATURE_NAMES = "feature_names"
    PAD_VALUE = "pad_value"
    LABELS = "labels"
    TREE = "tree"
    BRANCHES = "branches"
    TRAINING = "training"
    PARAMS = "params"
    VERSIONS = "versions"
    PARITY = "parity"
    COLLECTIONS = "collections"
    SORT_BY = "sort_by"
    NAN_POLICY = "nan_policy"
    REGRESSION = "regression"
    FOLDS = "folds"


K = MetadataKey
# Bounds on what a rootml.json may ask the server to build per entry: a pad length (items kept
# of a jagged branch) or fixed-array width, and values per entry over all inputs. Real models use
# tens to a few thousand; a request padded to 1e9 columns would exhaust memory.
MAX_PAD_LENGTH = 1 << 16
MAX_ROW_VALUES = 1 << 20
_LEGACY_NOTED: set[Path] = set()


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
    if metadata.get(K.FORMAT, FORMAT) != FORMAT:
        raise ModelError(f"{what}: unknown format {metadata.get(K.FORMAT)!r} (rootml reads 1)")
    if metadata.get(K.LAYOUT) not in (None, "flat", "collection"):
        raise ModelError(f"{what}: layout {metadata[K.LAYOUT]!r} is not 'flat' or 'collection'")
    normalization = metadata.get(K.NORMALIZATION) or {}
    if not isinstance(normalization, dict) or normalization.get(K.METHOD) not in (
        None,
        "standard",
        "minmax",
    ):
        raise ModelError(
            f"{what}: normalization must be {{'method': 'standard'|'minmax'|null, 'folded': "
            f"bool}}, not {normalization!r}"
        )
    pad_value = metadata.get(K.PAD_VALUE, 0.0)
    if pad_value is not None and (
        not isinstance(pad_value, (int, float)) or not math.isfinite(pad_value)
    ):
        raise ModelError(f"{what}: pad_value {pad_value!r} is not a finite number")
    if metadata.get(K.SPECS) is not None:
        _check_specs(metadata[K.SPECS], what)


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


def run_metadata(run: Any, folded: bool, opset: int, parity: dict[str, Any]) -> dict[str, Any]:
    """rootml.json of an exported run (a rootml.export.TrainedRun), as strict JSON: metrics and
    params may hold numpy scalars and NaN (an AUC of one class), written as plain numbers and
    null."""
    import onnx
    import onnxruntime
    import torch

    import rootml

    fingerprint = run.specs.fingerprint
    checkpoint = run.checkpoint
    metadata: dict[str, Any] = {
        K.FORMAT: FORMAT,
        K.LAYOUT: run.layout_name,
        K.SPECS: run.specs.to_dict(),
        K.NORMALIZATION: {K.METHOD: run.normalize, K.FOLDED: bool(folded)},
        K.FEATURE_NAMES: run.feature_names,
        K.PAD_VALUE: run.pad_value,
        K.LABELS: run.labels,
        K.TREE: fingerprint.get("tree"),
        K.BRANCHES: fingerprint.get("branches"),
        K.TRAINING: {
            "run": str(run.run_dir),
            "checkpoint": str(run.checkpoint_path),
            "epoch": checkpoint.get("epoch"),
            "metrics": checkpoint.get("metrics"),
            K.PARAMS: run.params,
            "summary": run.summary,
        },
        K.VERSIONS: {
            "rootml": rootml.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": int(opset),
        },
        K.PARITY: parity,
    }
    if run.regression:
        metadata[K.REGRESSION] = {k: run.regression[k] for k in ("targets", "loss")}
    if run.layout_name == "collection":
        metadata[K.COLLECTIONS] = {
            key: {"branches": list(branches), "length": int(run.layout.lengths[key])}
            for key, branches in run.layout.collections.items()
        }
    return finite_json(metadata)
