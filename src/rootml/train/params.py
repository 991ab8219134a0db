"""params.json: MLaaS4HEP's keys and rootml's own, mapped in this one place to the arguments of
RootIterableDataset and fit().

MLaaS4HEP keys: nevts (entries to read over all files, -1 all), shuffle, chunk_size, epochs,
batch_size, identifier (branches kept as batch["ids"], never features), branch (the tree name),
selected_branches, exclude_branches, hist (a folder name: per-class histograms of the training
entries are drawn into RUN/<hist>/), redirector (prefix for grid paths), verbose (1 info, 2 debug
logging of rootml).
rootml's own: device (auto|cpu|cuda|cuda:N), num_workers, lr, val_fraction (the last fraction of
each file's entries), normalize (standard|minmax|null), max_len (pad length: int, quantile or per
branch), balance ("class"), seed, amp, cut, aliases, sort_by, nan_policy, weights (per file),
weight_branch, label_branch, class_weights (one per class, multiply the loss weights), pad_value,
specs_nevts (entries sampled to fit the Specs; null: every training entry), layout
(flat|collection), checkpoint_every (training steps between checkpoints inside an epoch, single
process), debug_entries (write the (file, entry) pairs trained on per epoch into RUN/debug/).
"""

from __future__ import annotations

import json
import os
from typing import Any

# MLaaS4HEP key -> rootml argument.
MLAAS4HEP_KEYS = {
    "identifier": "identifiers",
    "branch": "tree",
    "selected_branches": "branches",
    "exclude_branches": "exclude",
}
DEFAULTS: dict[str, Any] = {
    "nevts": None,
    "shuffle": True,
    "chunk_size": 100_000,
    "epochs": 5,
    "batch_size": 1024,
    "identifiers": None,
    "tree": None,
    "branches": None,
    "exclude": None,
    "hist": None,
    "redirector": None,
    "verbose": 0,
    "device": "auto",
    "num_workers": 0,
    "lr": 1e-3,
    "val_fraction": 0.2,
    "normalize": "standard",
    "max_len": None,
    "balance": None,
    "seed": 0,
    "amp": False,
    "cut": None,
    "aliases": None,
    "sort_by": None,
    "nan_policy": "keep",
    "weights": None,
    "weight_branch": None,
    "label_branch": None,
    "class_weights": None,
    "pad_value": 0.0,
    "specs_nevts": None,
    "layout": "flat",
    "checkpoint_every": None,
    "debug_entries": False,
}
# Arguments passed to RootIterableDataset as they are.
DATASET_KEYS = (
    "tree",
    "branches",
    "exclude",
    "identifiers",
    "batch_size",
    "chunk_size",
    "shuffle",
    "seed",
    "pad_value",
    "cut",
    "aliases",
    "redirector",
    "sort_by",
    "nan_policy",
    "weights",
    "weight_branch",
    "label_branch",
    "balance",
    "normalize",
    "layout",
)


def load_params(params: str | os.PathLike | dict[str, Any] | None) -> dict[str, Any]:
    """Effective parameters: DEFAULTS updated by the params (a dict or a JSON file), MLaaS4HEP
    keys renamed. Unknown keys raise ValueError (a typo should not be silently ignored)."""
    if isinstance(params, (str, os.PathLike)):
        with open(params) as source:
            params = json.load(source)
    effective = dict(DEFAULTS)
    for key, value in (params or {}).items():
        name = MLAAS4HEP_KEYS.get(key, key)
        if name not in DEFAULTS:
            raise ValueError(
                f"unknown parameter {key!r}; known: {sorted(set(DEFAULTS) | set(MLAAS4HEP_KEYS))}"
            )
        effective[name] = value
    if isinstance(effective["nevts"], int) and effective["nevts"] < 0:
        effective["nevts"] = None
    if isinstance(effective["identifiers"], str):
        effective["identifiers"] = [effective["identifiers"]]
    if isinstance(effective["max_len"], dict):
        effective["max_len"] = {k: v for k, v in effective["max_len"].items()}
    return effective


def dataset_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """The RootIterableDataset keyword arguments of effective parameters (None left out)."""
    return {key: params[key] for key in DATASET_KEYS if params.get(key) is not None}
