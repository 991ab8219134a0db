"""In-memory epochs: the first epoch streams and keeps the batches, later epochs shuffle them in
memory; every training entry still once per epoch, resume (after an epoch and inside one) equals
an uninterrupted run, and a sample above the memory limit keeps streaming."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from rootml import RootIterableDataset
from rootml.datasets import fit_specs
from rootml.train import fit, run_from_params

BRANCHES = ["x1", "score_hint", "pt"]
MODEL = """import torch

def model(idim):
    return torch.nn.Sequential(torch.nn.Linear(idim, 8), torch.nn.ReLU(),
                               torch.nn.Dropout(0.2), torch.nn.Linear(8, 1), torch.nn.Sigmoid())
"""
PARAMS = {"tree": "Events", "branches": BRANCHES, "batch_size": 150, "lr": 0.01, "device": "cpu",
          "chunk_size": 400, "val_fraction": 0.25, "debug_entries": True, "seed": 3,
          "in_memory": 50_000_000}  # fmt: skip
EXPECTED = np.sort(np.r_[np.arange(1500), 10**6 + np.arange(1500)])


def order(run, epoch):
    seen = np.load(run / "debug" / f"entries_epoch_{epoch:03d}.npz")
    return seen["file_index"] * 10**6 + seen["entry"]


def test_later_epochs_shuffle_in_memory_and_resume_the_same(generated, tmp_path, caplog):
    files = [str(generated["a"]), str(generated["b"])]
    (tmp_path / "model.py").write_text(MODEL)
    with caplog.at_level(logging.INFO, logger="rootml.train.memory"):
        full = run_from_params(files, [1, 0], tmp_path / "model.py", {**PARAMS, "epochs": 3}, tmp_path / "full")  # fmt: skip
    kept = [r.getMessage() for r in caplog.records if "kept" in r.getMessage()]
    assert any("train sample kept, 3000 rows" in m for m in kept)
    assert any("val sample kept, 1000 rows" in m for m in kept)
    orders = [order(tmp_path / "full", e) for e in (1, 2, 3)]
    for seen in orders:
        np.testing.assert_array_equal(np.sort(seen), EXPECTED)  # each entry once per epoch
    assert not np.array_equal(orders[1], orders[2]) and not np.array_equal(orders[1], EXPECTED)
    # Memory batches are whole batch_size rows but the last.
    assert full["epoch_events"][1] == full["epoch_events"][2] == 4000

    run_from_params(files, [1, 0], tmp_path / "model.py", {**PARAMS, "epochs": 1}, tmp_path / "cut")  # fmt: skip
    resumed = run_from_params(files, [1, 0], tmp_path / "model.py", {**PARAMS, "epochs": 3}, tmp_path / "cut", resume=True)  # fmt: skip
    for e in (2, 3):
        np.testing.assert_array_equal(order(tmp_path / "cut", e), order(tmp_path / "full", e))
    for key in ("train_loss", "train_auc", "val_loss", "val_auc"):
        assert resumed["final"][key] == pytest.approx(full["final"][key], abs=1e-6)


def datasets(generated):
    files = [str(generated["a"]), str(generated["b"])]
    specs = fit_specs(files, "Events", BRANCHES, entries=(0, 1500))
    options = dict(tree="Events", branches=BRANCHES, labels=[1, 0], specs=specs, batch_size=150,
                   chunk_size=400, normalize="standard")  # fmt: skip
    train = RootIterableDataset(files, entries=(0, 1500), shuffle=True, seed=3, **options)
    val = RootIterableDataset(files, entries=(1500, 2000), **options)
    return train, val


class Stop(Exception):
    pass


def test_resume_inside_an_in_memory_epoch(generated, tmp_path):
    def model():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                   torch.nn.Linear(8, 1), torch.nn.Sigmoid())  # fmt: skip

    options = dict(epochs=2, lr=0.01, device="cpu", in_memory=10**8, score_train=False)
    full = fit(model(), *datasets(generated), out_dir=tmp_path / "full", **options)

    def stop(info):
        if info["epoch"] == 2 and info["step"] == 13:
            raise Stop

    with pytest.raises(Stop):
        fit(model(), *datasets(generated), out_dir=tmp_path / "cut", checkpoint_every=4, on_step=stop, **options)  # fmt: skip
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert state["partial"]["memory"] and state["partial"]["step"] == 12
    resumed = fit(model(), *datasets(generated), out_dir=tmp_path / "cut", resume=True, **options)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_auc"):
        assert resumed[-1][key] == pytest.approx(full[-1][key], abs=1e-6)
    assert resumed[-1]["train_events"] == full[-1]["train_events"] == 3000


def test_above_the_limit_the_sample_streams(generated, tmp_path, caplog):
    files = [str(generated["a"]), str(generated["b"])]
    (tmp_path / "model.py").write_text(MODEL)
    params = {**PARAMS, "epochs": 2, "in_memory": 20_000}  # a few batches of 150 rows
    with caplog.at_level(logging.INFO, logger="rootml.train.memory"):
        run_from_params(files, [1, 0], tmp_path / "model.py", params, tmp_path / "run")
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "the train sample needs more than 20,000 bytes" in said and "kept" not in said
    # Epoch 2 read the files: its order is the dataset's own epoch-2 order.
    train, _ = datasets(generated)
    train.set_epoch(1)
    expected = np.concatenate([b["file"].numpy() * 10**6 + b["entry"].numpy() for b in train])
    np.testing.assert_array_equal(order(tmp_path / "run", 2), expected)
