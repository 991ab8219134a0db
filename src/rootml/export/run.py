"""Export a training run into the model repository: ONNX graph, parity check, rootml.json."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from rootml import defaults
from rootml._jsonsafe import finite_json
from rootml.errors import ModelError
from rootml.export.checkpoint import TrainedRun, load_run
from rootml.export.folds import FOLD_INPUT, is_folds_run, load_folds, with_folds
from rootml.export.graph import (
    DEFAULT_OPSET,
    ExportedModel,
    build_ensemble,
    fold_parameters,
    input_names,
    to_onnx,
)
from rootml.export.metadata import MetadataKey, run_metadata
from rootml.export.parity import ParityBatches, compare, parity_batches
from rootml.export.repository import DEFAULT_MAX_BATCH_SIZE, add_onnx_model, model_dir
from rootml.runfolder import MLFLOW_RUN_FILE

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = defaults.PARITY_TOLERANCE
DEFAULT_PARITY_BATCHES = defaults.PARITY_BATCHES
DEFAULT_PARITY_BATCH_SIZE = defaults.PARITY_BATCH_SIZE


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
    members, folds = None, None
    if is_folds_run(source):
        folds, members = load_folds(source)
        run = members[0]
    else:
        run = load_run(source)
    onnx_bytes, parity = build_onnx(
        run,
        fold_normalization=fold_normalization,
        opset=opset,
        tolerance=tolerance,
        batches=parity_batches,
        batch_size=parity_batch_size,
        members=members,
    )
    metadata = run_metadata(run, fold_normalization, opset, parity)
    if members is not None:
        metadata = _folds_metadata(metadata, source, folds, members)
    version = add_onnx_model(repo, name, onnx_bytes, metadata, max_batch_size=max_batch_size)
    log.info("exported %s as %s version %d", source, name, version)
    _track(
        Path(source) if members is not None else run.run_dir, model_dir(repo, name) / str(version)
    )
    return version


def _folds_metadata(metadata, source, folds, members) -> dict[str, Any]:
    """rootml.json of a k-fold ensemble: "folds" (expression, number, the "fold" input) and
    the training record of every fold."""
    metadata[MetadataKey.FOLDS] = {**{k: folds[k] for k in ("folds", "n_folds", "expression")},
                         "input": FOLD_INPUT}  # fmt: skip
    training = metadata[MetadataKey.TRAINING]
    metadata[MetadataKey.TRAINING] = {
        "run": str(Path(source)),
        MetadataKey.PARAMS: training[MetadataKey.PARAMS],
        "folds": [
            {"run": str(m.run_dir), "checkpoint": str(m.checkpoint_path),
             "epoch": m.checkpoint.get("epoch"), "metrics": m.checkpoint.get("metrics"),
             "test": (m.summary or {}).get("test")}
            for m in members
        ],
    }  # fmt: skip
    return finite_json(metadata)


def _track(run_dir: Path, version_dir: Path) -> None:
    """Add the exported model to the training run's MLflow run, when it has one."""
    if (run_dir / MLFLOW_RUN_FILE).is_file():
        from rootml.train.tracking import log_export

        log_export(run_dir, version_dir)


def build_onnx(
    run: TrainedRun,
    *,
    fold_normalization: bool = False,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    batches: int = DEFAULT_PARITY_BATCHES,
    batch_size: int = DEFAULT_PARITY_BATCH_SIZE,
    members: list[TrainedRun] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """The checked ONNX bytes of a loaded run and its parity record (for rootml.json); with
    `members` (the fold runs of a k-fold run, `run` the first), their ensemble
    (rootml.export.folds), checked on rows of every fold.

    Raises ModelError when the export fails or the parity exceeds `tolerance`.
    """
    if batches < 1 or batch_size < 2:
        raise ModelError("the parity check needs at least one batch of at least 2 rows")
    data: ParityBatches = parity_batches(run, batches, batch_size)
    blocks = data.blocks
    if members is not None:
        blocks = [with_folds(block, len(members)) for block in blocks]
    example = blocks[0]
    normalize = run.pipeline().normalize
    if not fold_normalization and normalize is not None:
        example = normalize(dict(example))
    if members is not None:
        onnx_bytes = build_ensemble(members, fold_normalization, example, opset)
    else:
        fold = fold_parameters(run) if fold_normalization else None
        module = ExportedModel(run.module, run.layout_name, input_names(run), fold, run.pad_value,
                               run.output_affine)  # fmt: skip
        onnx_bytes = to_onnx(module, example, opset)
    worst = compare(run, onnx_bytes, blocks, folded=fold_normalization, members=members)
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
