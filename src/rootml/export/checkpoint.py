"""A training run as export sees it: the checkpoint, the model rebuilt from RUN/model.py, Specs.

The run folder follows the contract between train/ and export/::

    RUN/model.py          defines model(**model_args): model(idim) for the flat layout,
                          model(inputs) for the collection layout
    RUN/checkpoint.pt     the latest checkpoint; RUN/checkpoints/epoch_NNN.pt the earlier ones;
                          RUN/checkpoints/best.pt the best epoch (early stopping): exported
                          instead of checkpoint.pt when it exists
    RUN/specs.json        the Specs (also inside the checkpoint)
    RUN/summary.json      the training summary (optional)

Checkpoint keys read: model_state, model_file, model_args, layout ("flat" or "collection"),
feature_names (checked against the Specs), labels, normalize, pad_value, specs (else
RUN/specs.json), params, epoch, metrics, regression (targets, loss, and the output scale and
offset that give the targets' units), and for the collection layout optionally collections
(name -> branches; default: jagged branches grouped by name prefix, as CollectionLayout does).

How a model is called: rootml.transforms.feed.call_model, the rule training uses too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rootml.errors import ModelError
from rootml.transforms import Specs
from rootml.transforms.collection import layout_parts
from rootml.transforms.normalize import make_layout

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "checkpoints/best.pt"  # rootml.train.checkpoint.BEST: the best epoch (early stopping)
LAYOUTS = ("flat", "collection")


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
        if run_dir.name == "checkpoints" and (run_dir.parent / "model.py").exists():
            run_dir = run_dir.parent
        return run_dir, path
    raise ModelError(f"no training run or checkpoint at {path}")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict written by rootml train. Raises ModelError if unreadable or foreign.

    Loaded with ``weights_only=False``: exporting a run executes its model.py anyway, so the run
    folder is trusted code already, and the checkpoint may hold plain Python objects (numpy
    scalars in metrics, dataset state) that the weights-only unpickler refuses.
    """
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle, zip and torch errors alike
        raise ModelError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(checkpoint, dict) or "model_state" not in checkpoint:
        raise ModelError(f"{path} is not a rootml checkpoint (no 'model_state')")
    if checkpoint.get("format", 1) != 1:
        raise ModelError(f"{path}: unknown checkpoint format {checkpoint.get('format')!r}")
    return checkpoint


def import_model_file(path: str | os.PathLike, function: str = "model") -> Any:
    """The `function` defined by the Python file at `path` (imported by path, under a private
    module name). Raises ModelError when the file cannot be imported or lacks it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"rootml_run_model_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs so that dataclasses and pickling inside the user's file work.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(name, None)
        raise ModelError(f"cannot import model file {path}: {err!r}") from err
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ModelError(f"model file {path} defines no function {function!r}")
    return factory


def load_run(source: str | os.PathLike) -> TrainedRun:
    """Load a run folder or checkpoint: checkpoint, Specs, layout, and the model with its weights.

    Raises ModelError (missing or unreadable files, a model whose state does not load).
    """
    run_dir, checkpoint_path = locate(source)
    checkpoint = load_checkpoint(checkpoint_path)
    specs = _specs(checkpoint, run_dir, checkpoint_path)
    layout_name = checkpoint.get("layout") or "flat"
    if layout_name not in LAYOUTS:
        raise ModelError(f"{checkpoint_path}: unknown layout {layout_name!r}")
    pad_value = float(checkpoint.get("pad_value", 0.0))
    layout = _layout(specs, layout_name, pad_value, checkpoint.get("collections"))
    expected = checkpoint.get("feature_names")
    if expected is not None and list(expected) != list(layout.feature_names):
        raise ModelError(
            f"{checkpoint_path}: the checkpoint's feature_names do not match its Specs "
            f"({len(expected)} vs {len(layout.feature_names)} features)"
        )
    factory = import_model_file(run_dir / checkpoint.get("model_file", "model.py"))
    module = _build(factory, checkpoint, checkpoint_path)
    summary = None
    if (run_dir / "summary.json").is_file():
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except ValueError as err:
            raise ModelError(f"{run_dir / 'summary.json'}: not valid JSON: {err}") from err
    labels = checkpoint.get("labels")
    return TrainedRun(
        run_dir=run_dir,
        checkpoint_path=checkpoint_path,
        checkpoint=checkpoint,
        module=module,
        specs=specs,
        layout_name=layout_name,
        layout=layout,
        normalize=checkpoint.get("normalize"),
        pad_value=pad_value,
        labels=None if labels is None else [str(label) for label in labels],
        params=dict(checkpoint.get("params") or {}),
        summary=summary,
        regression=checkpoint.get("regression"),
    )


def _specs(checkpoint: Mapping[str, Any], run_dir: Path, checkpoint_path: Path) -> Specs:
    try:
        if checkpoint.get("specs") is not None:
            return Specs.from_dict(checkpoint["specs"])
        if (run_dir / "specs.json").is_file():
            return Specs.load(run_dir / "specs.json")
    except Exception as err:
        raise ModelError(f"{checkpoint_path}: unreadable Specs: {err}") from err
    raise ModelError(f"{checkpoint_path}: no Specs in the checkpoint nor {run_dir / 'specs.json'}")


def _layout(specs: Specs, name: str, pad_value: float, collections: Any) -> Any:
    if name == "collection" and collections:
        from rootml.transforms import CollectionLayout

        return CollectionLayout(specs, pad_value, collections)
    return make_layout(specs, name, pad_value)


def _build(factory: Any, checkpoint: Mapping[str, Any], checkpoint_path: Path) -> Any:
    import torch

    args = dict(checkpoint.get("model_args") or {})
    try:
        module = factory(**args)
    except Exception as err:
        raise ModelError(f"model(**{args}) from the run's model file failed: {err!r}") from err
    if not isinstance(module, torch.nn.Module):
        raise ModelError(
            f"the run's model(**{args}) returned {type(module).__name__}, not a Module"
        )
    from rootml.train.checkpoint import unwrapped_state

    try:
        module.load_state_dict(unwrapped_state(checkpoint["model_state"]))
    except (RuntimeError, TypeError, KeyError) as err:
        raise ModelError(f"{checkpoint_path}: model_state does not fit the model: {err}") from err
    return module.eval()
