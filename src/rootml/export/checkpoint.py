"""A training run as export sees it: the checkpoint, the model rebuilt from RUN/model.py, Specs.

The run folder follows the contract between train/ and export/, rootml.runfolder: model.py
defines model(**model_args) (model(idim) for the flat layout, model(inputs) for the collection
layout). Checkpoint keys read: model state, model file and arguments, layout, feature names
(checked against the Specs), labels, normalisation, pad value, Specs (else RUN/specs.json),
params, epoch, metrics, regression (targets, loss, and the output scale and offset that give
the targets' units), and for the collection layout optionally its collections (name ->
branches; default: jagged branches grouped by name prefix, as CollectionLayout does). A run
with RUN/checkpoints/best.pt (early stopping) is exported from that checkpoint.

How a model is called: rootml.transforms.feed.call_model, the rule training uses too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rootml._userfiles import import_function
from rootml.errors import ModelError
from rootml.runfolder import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CHECKPOINTS_DIR,
    MODEL_FILE,
    SPECS_FILE,
    SUMMARY_FILE,
    CheckpointKey,
    load_checkpoint,
    unwrapped_state,
)
from rootml.transforms import Specs
from rootml.transforms.collection import layout_parts
from rootml.transforms.pipeline import LAYOUTS, Pipeline, build_pipeline, make_layout


@dataclass
class TrainedRun:
    """What export needs of one checkpoint of a training run.

    module: the model rebuilt from model.py with the checkpoint's weights, in eval mode.
    layout: the FlatLayout or CollectionLayout object (from the Specs) that made its inputs.
    inputs: (array key, mask key) of each part of the layout, in order ("features", "mask") for
    the flat layout; collections follow the flat part ("Jet", "Jet_mask").
    """

    run_dir: Path
    checkpoint_path: Path
    checkpoint: dict[str, Any]
    module: Any  # torch.nn.Module
    specs: Specs
    layout_name: str
    layout: Any
    normalize: str | None
    pad_value: float
    labels: list[str] | None
    params: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    regression: dict[str, Any] | None = None

    @property
    def output_affine(self) -> tuple[list[float], list[float]] | None:
        """(scale, offset) per output column that give a regression model's outputs in its
        targets' units (checkpoint "regression"), or None (a classifier)."""
        if not self.regression:
            return None
        return list(self.regression["scale"]), list(self.regression["offset"])

    @property
    def parts(self) -> list[tuple[str, str, list[str]]]:
        """(array key, mask key, branch of each index along axis 1) of each layout part with at
        least one column (a collection layout without flat branches has no "features")."""
        return [part for part in layout_parts(self.layout) if part[2]]

    @property
    def feature_names(self) -> list[str]:
        return list(self.layout.feature_names)

    def pipeline(self) -> Pipeline:
        """The value pipeline training applied (rootml.transforms.build_pipeline), on this run's
        layout; `.normalize` is None for a run trained without normalisation."""
        return build_pipeline(
            self.specs,
            self.layout,
            pad_value=self.pad_value,
            sort_by=self.params.get("sort_by"),
            nan_policy=self.params.get("nan_policy") or "keep",
            normalize=self.normalize,
        )


def locate(source: str | os.PathLike) -> tuple[Path, Path]:
    """(run folder, checkpoint file) of a run folder or of a checkpoint file inside one.

    A checkpoint in RUN/checkpoints/ belongs to RUN. Raises ModelError when neither exists.
    """
    path = Path(source)
    if path.is_dir():
        checkpoint = path / CHECKPOINT_FILE
        if (path / BEST_FILE).is_file():  # a run stopped early: its best epoch
            checkpoint = path / BEST_FILE
        if not checkpoint.is_file():
            raise ModelError(f"{path} is not a training run: it has no {CHECKPOINT_FILE}")
        return path, checkpoint
    if path.is_file():
        run_dir = path.parent
        if run_dir.name == CHECKPOINTS_DIR and (run_dir.parent / MODEL_FILE).exists():
            run_dir = run_dir.parent
        return run_dir, path
    raise ModelError(f"no training run or checkpoint at {path}")


def import_model_file(path: str | os.PathLike, function: str = "model") -> Any:
    """The `function` defined by the Python file at `path` (rootml._userfiles.import_function).
    Raises UserCodeError (a ModelError) when the file is missing, fails to import or lacks it."""
    return import_function(path, function, "model file")


def load_run(source: str | os.PathLike) -> TrainedRun:
    """Load a run folder or checkpoint: checkpoint, Specs, layout, and the model with its weights.

    Raises ModelError (missing or unreadable files, a model whose state does not load).
    """
    run_dir, checkpoint_path = locate(source)
    checkpoint = load_checkpoint(checkpoint_path)
    specs = _specs(checkpoint, run_dir, checkpoint_path)
    layout_name = checkpoint.get(CheckpointKey.LAYOUT) or "flat"
    if layout_name not in LAYOUTS:
        raise ModelError(f"{checkpoint_path}: unknown layout {layout_name!r}")
    pad_value = float(checkpoint.get(CheckpointKey.PAD_VALUE, 0.0))
    collections = checkpoint.get(CheckpointKey.COLLECTIONS) if layout_name == "collection" else None
    layout = make_layout(specs, layout_name, pad_value, collections or None)
    expected = checkpoint.get(CheckpointKey.FEATURE_NAMES)
    if expected is not None and list(expected) != list(layout.feature_names):
        raise ModelError(
            f"{checkpoint_path}: the checkpoint's feature_names do not match its Specs "
            f"({len(expected)} vs {len(layout.feature_names)} features)"
        )
    factory = import_model_file(run_dir / checkpoint.get(CheckpointKey.MODEL_FILE, MODEL_FILE))
    module = _build(factory, checkpoint, checkpoint_path)
    summary = None
    if (run_dir / SUMMARY_FILE).is_file():
        try:
            summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        except ValueError as err:
            raise ModelError(f"{run_dir / SUMMARY_FILE}: not valid JSON: {err}") from err
    labels = checkpoint.get(CheckpointKey.LABELS)
    return TrainedRun(
        run_dir=run_dir,
        checkpoint_path=checkpoint_path,
        checkpoint=checkpoint,
        module=module,
        specs=specs,
        layout_name=layout_name,
        layout=layout,
        normalize=checkpoint.get(CheckpointKey.NORMALIZE),
        pad_value=pad_value,
        labels=None if labels is None else [str(label) for label in labels],
        params=dict(checkpoint.get(CheckpointKey.PARAMS) or {}),
        summary=summary,
        regression=checkpoint.get(CheckpointKey.REGRESSION),
    )


def _specs(checkpoint: Mapping[str, Any], run_dir: Path, checkpoint_path: Path) -> Specs:
    try:
        if checkpoint.get(CheckpointKey.SPECS) is not None:
            return Specs.from_dict(checkpoint[CheckpointKey.SPECS])
        if (run_dir / SPECS_FILE).is_file():
            return Specs.load(run_dir / SPECS_FILE)
    except Exception as err:
        raise ModelError(f"{checkpoint_path}: unreadable Specs: {err}") from err
    raise ModelError(f"{checkpoint_path}: no Specs in the checkpoint nor {run_dir / SPECS_FILE}")


def _build(factory: Any, checkpoint: Mapping[str, Any], checkpoint_path: Path) -> Any:
    import torch

    args = dict(checkpoint.get(CheckpointKey.MODEL_ARGS) or {})
    try:
        module = factory(**args)
    except Exception as err:
        raise ModelError(f"model(**{args}) from the run's model file failed: {err!r}") from err
    if not isinstance(module, torch.nn.Module):
        raise ModelError(
            f"the run's model(**{args}) returned {type(module).__name__}, not a Module"
        )
    try:
        module.load_state_dict(unwrapped_state(checkpoint[CheckpointKey.MODEL_STATE]))
    except (RuntimeError, TypeError, KeyError) as err:
        raise ModelError(f"{checkpoint_path}: model_state does not fit the model: {err}") from err
    return module.eval()
