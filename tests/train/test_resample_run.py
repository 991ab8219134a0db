"""`rootml train` with params.json "resample": the training entries of each epoch (debug_entries)
are undersampled to 1:1 within binomial errors, a new draw each epoch, while validation and test
read every entry; the counts are in summary.json's report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rootml.errors import ConfigError
from rootml.train import run_from_params

from ._generated import make_files, trained, write_model

BASE = {"tree": "Events", "branches": ["x1", "score_hint"], "batch_size": 200, "device": "cpu",
        "chunk_size": 500, "debug_entries": True}  # fmt: skip


def test_training_set_alone_is_undersampled(tmp_path):
    # Signal 500 entries, background 2000 (1:4); the first 60% of each file trains: 300 : 1200.
    files = [str(make_files(tmp_path / "s", 500)["a"]), str(make_files(tmp_path / "b", 2000)["b"])]
    params = {**BASE, "epochs": 2, "val_fraction": 0.2, "test_fraction": 0.2,
              "resample": "undersample"}  # fmt: skip
    run = tmp_path / "run"
    summary = run_from_params(files, [1, 0], write_model(tmp_path), params, run)
    epochs = []
    for epoch in (1, 2):
        file_index, entry = trained(run, epoch)
        keys = file_index * 10**6 + entry
        assert len(np.unique(keys)) == len(keys)  # no entry twice
        np.testing.assert_array_equal(np.sort(entry[file_index == 0]), np.arange(300))
        background = entry[file_index == 1]
        assert background.max() < 1200
        # Kept with p = 300/1200: binomial sd 15, allow 5 sd.
        assert abs(len(background) - 300) < 5 * np.sqrt(1200 * 0.25 * 0.75)
        epochs.append(set(background.tolist()))
    assert epochs[0] != epochs[1]
    history = json.loads((run / "history.json").read_text())
    assert all(row["val_events"] == 100 + 400 for row in history)
    assert summary["test"]["test_events"] == 100 + 400
    # The report counts every pass over the training set: the two epochs and the final scoring
    # of the training entries (score_train, a third draw: 900 dropped, sd 15).
    dropped = sum(1200 - len(kept) for kept in epochs)
    scoring = summary["report"]["undersampled:0"] - dropped
    assert abs(scoring - 900) < 5 * np.sqrt(1200 * 0.25 * 0.75)
    assert json.loads((run / "summary.json").read_text())["report"] == summary["report"]


def test_resample_is_refused_for_regression(generated, tmp_path):
    files = [str(generated["a"]), str(generated["b"])]
    params = {**BASE, "branches": ["x1"], "target_branch": "y", "resample": "oversample"}
    with pytest.raises(ConfigError, match="resample"):
        run_from_params(files, [1, 0], write_model(tmp_path), params, tmp_path / "run")
