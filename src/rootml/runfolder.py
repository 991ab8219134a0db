"""A training run folder: the contract between train/ (which writes it) and export/ (which
reads it). The names of its files and of the checkpoint's keys are defined here once.

    RUN/model.py                  the user's model file: model(**model_args) -> torch.nn.Module
    RUN/checkpoint.pt             the latest checkpoint; RUN/checkpoints/epoch_NNN.pt earlier ones
    RUN/specs.json                the Specs (also inside the checkpoint)
    RUN/params.json, summary.json the effective parameters; the training summary

A checkpoint is one dict saved with torch.save (keys: `CheckpointKey`).
"""

from __future__ import annotations

import os
from typing import Any

from rootml.errors import ModelError

FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.py"
SPECS_FILE = "specs.json"
PARAMS_FILE = "params.json"
SUMMARY_FILE = "summary.json"


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
