"""A training run folder: the contract between train/ (which writes it) and export/ (which
reads it). The names of its files and of the checkpoint's keys are defined here once.

    RUN/model.py                  the user's model file: model(**model_args) -> torch.nn.Module
    RUN/checkpoint.pt             the latest checkpoint; RUN/checkpoints/epoch_NNN.pt earlier ones
    RUN/checkpoints/best.pt       the best epoch of a run with early stopping: what the run
                                  stands for (export, init_from) when it exists
    RUN/specs.json                the Specs (also inside the checkpoint)
    RUN/params.json, summary.json the effective parameters; the training summary

A checkpoint is one dict saved with torch.save (keys: `CheckpointKey`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rootml.errors import ModelError

FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINTS_DIR = "checkpoints"
BEST_FILE = f"{CHECKPOINTS_DIR}/best.pt"
MODEL_FILE = "model.py"
SPECS_FILE = "specs.json"
PARAMS_FILE = "params.json"
SUMMARY_FILE = "summary.json"
MLFLOW_RUN_FILE = "mlflow.json"  # the run's MLflow run (rootml.train.tracking), when logged


class CheckpointKey:
    """Keys of a checkpoint dict. Written by the training loop: FORMAT, EPOCH (completed
    epochs), MODEL_STATE, OPTIMIZER_STATE, SCALER_STATE (AMP), HISTORY (a row per completed
    epoch), METRICS (the last row), DATASET_STATE, RNG_STATE, and PARTIAL for a checkpoint
    taken inside an epoch. Written by the run to describe the model, read by export: MODEL_FILE,
    MODEL_ARGS, LAYOUT ("flat" or "collection"), COLLECTIONS (collection layout: name ->
    branches), FEATURE_NAMES, LABELS, NORMALIZE, PAD_VALUE, SPECS, PARAMS, TREE, BRANCHES."""

    FORMAT = "format"
    EPOCH = "epoch"
    MODEL_STATE = "model_state"
    OPTIMIZER_STATE = "optimizer_state"
    SCALER_STATE = "scaler_state"
    HISTORY = "history"
    METRICS = "metrics"
    DATASET_STATE = "dataset_state"
    RNG_STATE = "rng_state"
    PARTIAL = "partial"
    SCHEDULE = "schedule"
    MONITOR = "monitor"
    STOPPED = "stopped"
    MODEL_FILE = "model_file"
    MODEL_ARGS = "model_args"
    LAYOUT = "layout"
    COLLECTIONS = "collections"
    FEATURE_NAMES = "feature_names"
    LABELS = "labels"
    NORMALIZE = "normalize"
    PAD_VALUE = "pad_value"
    SPECS = "specs"
    PARAMS = "params"
    TREE = "tree"
    BRANCHES = "branches"
    REGRESSION = "regression"


def load_checkpoint(path: str | os.PathLike, device: Any = "cpu") -> dict[str, Any]:
    """The checkpoint dict written by rootml train, tensors on `device`. Raises ModelError when
    it is unreadable, not a rootml checkpoint, or of an unknown format.

    Loaded with ``weights_only=False``: the run folder is the user's own (its model.py is code
    already), and the checkpoint holds plain Python objects (numpy values in metrics, RNG and
    dataset state) that the weights-only unpickler refuses.
    """
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # pickle, zip, OS and torch errors alike
        raise ModelError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or CheckpointKey.MODEL_STATE not in state:
        raise ModelError(f"{path} is not a rootml checkpoint (no {CheckpointKey.MODEL_STATE!r})")
    if state.get(CheckpointKey.FORMAT, FORMAT) != FORMAT:
        raise ModelError(f"{path}: unknown checkpoint format {state.get(CheckpointKey.FORMAT)!r}")
    return state


def run_checkpoint(source: str | os.PathLike) -> Path:
    """The checkpoint a run folder stands for (its BEST_FILE when it has one, else
    CHECKPOINT_FILE), or `source` itself when it is a file. Raises ModelError when there is
    none."""
    path = Path(source)
    if path.is_dir():
        path = path / BEST_FILE if (path / BEST_FILE).is_file() else path / CHECKPOINT_FILE
    if not path.is_file():
        raise ModelError(f"no training run or checkpoint at {source}")
    return path


def unwrapped_state(state: dict[str, Any]) -> dict[str, Any]:
    """A model state without the key prefix of a DDP ("module.") or torch.compile
    ("_orig_mod.") wrapper, when every key has it."""
    state = dict(state)
    for prefix in ("module.", "_orig_mod."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state
