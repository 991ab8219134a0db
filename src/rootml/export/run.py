"""Export a training run into the model repository: ONNX graph, parity check, rootml.json."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from rootml.errors import ModelError
from rootml.export.checkpoint import TrainedRun, load_run
from rootml.export.graph import (
    DEFAULT_OPSET,
    ExportedModel,
    fold_parameters,
    input_names,
    to_onnx,
)
from rootml.export.parity import ParityBatches, compare, parity_batches
from rootml.export.repository import DEFAULT_MAX_BATCH_SIZE, add_onnx_model, model_dir

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-5
DEFAULT_PARITY_BATCHES = 4
DEFAULT_PARITY_BATCH_SIZE = 256


def export_run(
    source: str | os.PathLike,
    repo: str | os.PathLike,
    name: str,
    *,
    fold_normalization: bool = False,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    parity_batches: int = DEFAULT_PARITY_BATCHES,
    parity_batch_size: int = DEFAULT_PARITY_BATCH_SIZE,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> int:
    """Export a training run (its folder, or one checkpoint file of it) as a new version of model
    `name` in `repo`; return the version number.

    Writes ``<repo>/<name>/<version>/model.onnx`` and its ``rootml.json`` (never an existing
    version), and a new model's config.pbtxt; an existing model's config.pbtxt is kept, and a
    graph whose inputs or outputs differ from it is refused (Triton serves one signature per
    model: export it under another name). The graph has a dynamic batch axis and the given ONNX `opset`; inputs are
    "features" FP32 (B, F) and "mask" BOOL (B, F) for the flat layout (the mask only when the
    model or the folded normalisation uses it), plus "<K>" FP32 (B, C, N) and "<K>_mask" BOOL
    (B, N) per collection of the collection layout; the output is "score" FP32.

    fold_normalization: the graph normalises its inputs itself (x - offset) / scale where the
    mask is True, `pad_value` where False, so clients send raw physics values.
    Parity: onnxruntime and torch (eval mode) are run on `parity_batches` batches of
    `parity_batch_size` rows of the training data (random inputs from the Specs' ranges when the
    files are gone); the export is refused, with nothing written, when the largest absolute
    difference of the outputs exceeds `tolerance`.
    Raises ModelError (bad run folder, name, export failure, parity failure, signature); the
    repository is then unchanged.
    """
    model_dir(repo, name)  # an unsafe name fails before any work
    run = load_run(source)
    onnx_bytes, parity = build_onnx(
        run,
        fold_normalization=fold_normalization,
        opset=opset,
        tolerance=tolerance,
        batches=parity_batches,
        batch_size=parity_batch_size,
    )
    metadata = run_metadata(run, fold_normalization, opset, parity)
    version = add_onnx_model(repo, name, onnx_bytes, metadata, max_batch_size=max_batch_size)
    log.info("exported %s as %s version %d", run.checkpoint_path, name, version)
    return version


def build_onnx(
    run: TrainedRun,
    *,
    fold_normalization: bool = False,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    batches: int = DEFAULT_PARITY_BATCHES,
    batch_size: int = DEFAULT_PARITY_BATCH_SIZE,
) -> tuple[bytes, dict[str, Any]]:
    """The checked ONNX bytes of a loaded run and its parity record (for rootml.json).

    Raises ModelError when the export fails or the parity exceeds `tolerance`.
    """
    if batches < 1 or batch_size < 2:
        raise ModelError("the parity check needs at least one batch of at least 2 rows")
    data: ParityBatches = parity_batches(run, batches, batch_size)
    fold = fold_parameters(run) if fold_normalization else None
    names = input_names(run)
    module = ExportedModel(run.module, run.layout_name, names, fold, run.pad_value)
    example = data.blocks[0]
    if fold is None and run.normalize is not None:
        from rootml.transforms import Normalize

        example = Normalize(run.specs, run.normalize, run.pad_value, run.layout)(dict(example))
    onnx_bytes = to_onnx(module, example, opset)
    worst = compare(run, onnx_bytes, data.blocks, folded=fold is not None)
    parity = {
        "max_abs_diff": worst,
        "tolerance": float(tolerance),
        "data": data.source,
        "batches": len(data.blocks),
        "rows": data.rows,
    }
    if data.reason:
        parity["reason"] = data.reason
    if not worst <= tolerance:
        raise ModelError(
            f"parity check failed for {run.checkpoint_path}: onnxruntime and torch differ by up "
            f"to {worst:.3g} (tolerance {tolerance:g}) on {data.rows} rows of {data.source}; "
            "nothing was written (data-dependent Python control flow in forward() is frozen by "
            "tracing; check the model)"
        )
    return onnx_bytes, parity


def run_metadata(
    run: TrainedRun, folded: bool, opset: int, parity: dict[str, Any]
) -> dict[str, Any]:
    """rootml.json of an exported run (see the repository's format in rootml.export.repository)."""
    import onnx
    import onnxruntime
    import torch

    import rootml

    fingerprint = run.specs.fingerprint
    checkpoint = run.checkpoint
    metadata: dict[str, Any] = {
        "format": 1,
        "layout": run.layout_name,
        "specs": run.specs.to_dict(),
        "normalization": {"method": run.normalize, "folded": bool(folded)},
        "feature_names": run.feature_names,
        "pad_value": run.pad_value,
        "labels": run.labels,
        "tree": fingerprint.get("tree"),
        "branches": fingerprint.get("branches"),
        "training": {
            "run": str(run.run_dir),
            "checkpoint": str(run.checkpoint_path),
            "epoch": checkpoint.get("epoch"),
            "metrics": checkpoint.get("metrics"),
            "params": run.params,
            "summary": run.summary,
        },
        "versions": {
            "rootml": rootml.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": int(opset),
        },
        "parity": parity,
    }
    if run.layout_name == "collection":
        metadata["collections"] = {
            key: {"branches": list(branches), "length": int(run.layout.lengths[key])}
            for key, branches in run.layout.collections.items()
        }
    # Metrics and params may hold numpy scalars and NaN (an AUC of one class); JSON gets plain
    # numbers, and null for what strict JSON cannot write.
    return _finite(json.loads(json.dumps(metadata, default=_plain)))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist"):  # torch tensors
        return value.tolist()
    return str(value)
