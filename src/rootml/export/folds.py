"""A k-fold run (rootml.train: RUN/folds.json, RUN/fold_k/) exported as one ensemble model.

The graph takes the inputs of the fold models (they share their Specs, so their inputs) plus
"fold", INT64 (B,): the value of the run's fold expression for each entry (rootml.json
"folds": {"folds": "event % 5", "n_folds": 5, "input": "fold", ...}). Every fold model scores
every entry, and the graph returns, per entry, the output of model (fold % n_folds): the model
trained without that fold's entries. So an entry of the training files is never scored by a
model that saw it, and new data gets an independent model picked by the same rule.

`rootml predict` computes "fold" from the files with the expression (fold_dataset_options), as
training did; a client of the server sends it as one more input. The graph itself is
rootml.export.graph.FoldEnsemble; this module needs no torch (the server imports it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from rootml.errors import ModelError
from rootml.export.checkpoint import TrainedRun, load_run
from rootml.runfolder import CHECKPOINT_FILE

log = logging.getLogger(__name__)

FOLDS_FILE = "folds.json"  # rootml.train.run.FOLDS_FILE
FOLD_INPUT = "fold"
FOLD_ALIAS = "rootml_fold_"  # the alias predict reads the fold expression's value under


def is_folds_run(source: str | Path) -> bool:
    return (Path(source) / FOLDS_FILE).is_file()


def load_folds(source: str | Path) -> tuple[dict[str, Any], list[TrainedRun]]:
    """(folds.json, the fold runs in fold order). Raises ModelError when a fold has no trained
    model yet, or the folds' inputs differ."""
    folder = Path(source)
    record = json.loads((folder / FOLDS_FILE).read_text())
    runs = []
    for k in range(int(record["n_folds"])):
        if not (folder / f"fold_{k}" / CHECKPOINT_FILE).is_file():
            raise ModelError(
                f"{folder} is a {record['n_folds']}-fold run without a trained fold {k}: train it "
                f"(rootml train ... --fold {k}) before exporting"
            )
        runs.append(load_run(folder / f"fold_{k}"))
    first = runs[0]
    for k, run in enumerate(runs[1:], 1):
        if run.feature_names != first.feature_names or run.normalize != first.normalize:
            raise ModelError(f"{folder}: fold {k} takes other inputs than fold 0")
    return record, runs


def with_folds(block: dict[str, np.ndarray], n_folds: int) -> dict[str, np.ndarray]:
    """A parity block with a "fold" column cycling through every fold (and values beyond
    n_folds, which the graph takes modulo n_folds)."""
    rows = len(next(iter(block.values())))
    return {**block, FOLD_INPUT: (np.arange(rows) % (2 * n_folds)).astype(np.int64)}


def fold_dataset_options(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Extra RootIterableDataset arguments that give batches a "fold" array for a k-fold
    ensemble (its rootml.json "folds"): the expression read as an alias into batch["ids"], then
    moved to "fold" by FoldColumn. Empty for any other model."""
    folds = (metadata or {}).get("folds")
    if not folds:
        return {}
    aliases = dict((metadata.get("specs") or {}).get("fingerprint", {}).get("aliases") or {})
    aliases[FOLD_ALIAS] = folds["expression"]
    return {"aliases": aliases, "identifiers": [FOLD_ALIAS], "transform": FoldColumn()}


class FoldColumn:
    """Dataset transform: the fold expression's value, read as the only identifier, becomes the
    "fold" array."""

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        block[FOLD_INPUT] = block.pop("ids")[:, 0]
        return block

    def __repr__(self) -> str:
        return "FoldColumn()"
