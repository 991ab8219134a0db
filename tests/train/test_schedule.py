"""Learning-rate schedules (against torch's own scheduler classes), early stopping (on constructed
metric sequences, then in a run whose best epoch is known: it is the one tested and exported),
and fine-tuning from an earlier run with frozen layers (bit-identical parameters)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rootml.errors import ConfigError
from rootml.train import run_from_params
from rootml.train.schedule import EarlyStopping, LRSchedule

from ._generated import checkpoint_outputs, read, standardised

LR, EPOCHS = 0.1, 12


def torch_lrs(schedulers, epochs=EPOCHS, metrics=None):
    """The learning rate of each epoch under torch's scheduler(s), stepped once per epoch."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = schedulers(optimizer)
    lrs = []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step(*([metrics[epoch]] if metrics is not None else []))
    return lrs


def our_lrs(schedule, metrics=None):
    lrs = []
    for epoch in range(schedule.epochs):
        lrs.append(schedule.lr_at(epoch))
        schedule.end_epoch(
            epoch, {"epoch": epoch + 1, "val_loss": metrics[epoch] if metrics else 0}
        )
    return lrs


@pytest.mark.parametrize("warmup", [0, 3])
def test_cosine_and_step_follow_torch(warmup):
    sched = torch.optim.lr_scheduler
    after = EPOCHS - warmup

    def with_warmup(main):
        if not warmup:
            return main
        return lambda opt: sched.SequentialLR(
            opt, [sched.LinearLR(opt, 1 / (warmup + 1), 1.0, warmup), main(opt)], [warmup]
        )

    cosine = with_warmup(lambda opt: sched.CosineAnnealingLR(opt, T_max=after - 1, eta_min=1e-3))
    ours = LRSchedule(LR, EPOCHS, "cosine", warmup, lr_min=1e-3)
    np.testing.assert_allclose(our_lrs(ours), torch_lrs(cosine), rtol=1e-12)
    assert our_lrs(LRSchedule(LR, EPOCHS, "cosine", warmup, lr_min=1e-3))[-1] == pytest.approx(1e-3)
    step = with_warmup(lambda opt: sched.StepLR(opt, step_size=4, gamma=0.5))
    np.testing.assert_allclose(our_lrs(LRSchedule(LR, EPOCHS, "step", warmup, step=4, gamma=0.5)), torch_lrs(step), rtol=1e-12)  # fmt: skip


def test_plateau_follows_torch():
    metrics = [1.0, 0.9, 0.95, 0.91, 0.92, 0.85, 0.86, 0.86, 0.87, 0.8, 0.81, 0.82]
    reference = torch_lrs(
        lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, "min", factor=0.3, patience=1, threshold=0, threshold_mode="abs"
        ),
        metrics=metrics,
    )
    ours = our_lrs(LRSchedule(LR, EPOCHS, "plateau", gamma=0.3, patience=1), metrics)
    np.testing.assert_allclose(ours, reference, rtol=1e-12)
    assert min(ours) < LR  # the sequence does plateau


def stop_epoch(values, patience, mode=None, min_delta=0.0, metric="val_loss"):
    """(epoch it stops after or None, best epoch) of EarlyStopping over constructed values."""
    monitor = EarlyStopping(metric, patience, mode, min_delta).monitor()
    for epoch, value in enumerate(values, 1):
        monitor.update({"epoch": epoch, metric: value})
        if monitor.bad >= patience:
            return epoch, monitor.best_epoch
    return None, monitor.best_epoch


def test_early_stopping_on_constructed_sequences():
    losses = [1.0, 0.8, 0.81, 0.79, 0.80, 0.85, 0.9]
    assert stop_epoch(losses, 2) == (6, 4)
    assert stop_epoch(losses, 2, min_delta=0.02) == (4, 2)  # 0.79 improves by 0.01 only
    assert stop_epoch(losses, 5) == (None, 4)
    assert stop_epoch([0.6, 0.7, 0.69, 0.71, 0.7, 0.7], 2, metric="val_auc") == (6, 4)  # max: AUC
    assert stop_epoch([0.5, float("nan"), 0.4], 1) == (2, 1)  # NaN never improves
    with pytest.raises(ConfigError, match="patience"):
        EarlyStopping.from_params({"patience": 0}, True)
    with pytest.raises(ConfigError, match="takes metric"):
        EarlyStopping.from_params({"metrc": "val_loss"}, True)


MLP = """import torch

def model(idim):
    return torch.nn.Sequential(torch.nn.Linear(idim, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 1), torch.nn.Sigmoid())
"""
BRANCHES = ["x1", "score_hint", "pt"]


def test_early_stopping_keeps_tests_and_exports_the_best_epoch(generated, tmp_path):
    from rootml.export.run import export_run

    (tmp_path / "model.py").write_text(MLP)
    files = [str(generated["a"]), str(generated["b"])]
    # The training loss falls every epoch, so with mode "max" epoch 1 stays the best: the run
    # stops after epoch 1 + patience, and the best model is epoch 1's.
    params = {"tree": "Events", "branches": BRANCHES, "epochs": 6, "batch_size": 100, "lr": 0.02,
              "device": "cpu", "val_fraction": 0.2, "test_fraction": 0.2,
              "lr_schedule": "step", "lr_step": 1, "lr_gamma": 0.5, "warmup_epochs": 1,
              "early_stopping": {"metric": "train_loss", "mode": "max", "patience": 2}}  # fmt: skip
    run = tmp_path / "run"
    summary = run_from_params(files, [1, 0], tmp_path / "model.py", params, run)
    history = json.loads((run / "history.json").read_text())
    losses = [row["train_loss"] for row in history]
    assert all(b < a for a, b in zip(losses, losses[1:]))  # the premise
    assert len(history) == 3 and summary["early_stopping"]["best_epoch"] == 1
    assert summary["early_stopping"]["stopped"] is True
    schedule = LRSchedule(0.02, 6, "step", 1, step=1, gamma=0.5)
    assert [row["lr"] for row in history] == pytest.approx([schedule.lr_at(e) for e in range(3)])
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert best["epoch"] == 1 and summary["test"]["epoch"] == 1

    export_run(run, tmp_path / "repo", "best")
    columns = {k: v[:300] for k, v in read(files[0], BRANCHES).items()}
    x = standardised(run, columns)
    session = ort.InferenceSession(str(tmp_path / "repo" / "best" / "1" / "model.onnx"))
    feeds = {
        i.name: x if i.name == "features" else np.ones_like(x, bool) for i in session.get_inputs()
    }
    (got,) = session.run(None, feeds)
    first = checkpoint_outputs(run, run / "checkpoints" / "epoch_001.pt", x)
    last = checkpoint_outputs(run, run / "checkpoints" / "epoch_003.pt", x)
    np.testing.assert_allclose(got.reshape(-1), first[:, 0], atol=1e-5)
    assert np.abs(got.reshape(-1) - last[:, 0]).max() > 1e-3
    # A stopped run has nothing left to train.
    again = run_from_params(files, [1, 0], tmp_path / "model.py", params, run, resume=True)
    assert again["new_epochs"] == 0

    # Fine-tuning from it: the first layer frozen stays bit-identical to the best epoch's, the
    # rest moves on.
    tuned = tmp_path / "tuned"
    fine = {**params, "init_from": str(run), "freeze": "0.*", "early_stopping": None,
            "lr_schedule": None, "warmup_epochs": 0, "epochs": 2}  # fmt: skip
    run_from_params(files, [1, 0], tmp_path / "model.py", fine, tuned)
    source = best["model_state"]
    for epoch in (1, 2):
        state = torch.load(tuned / "checkpoints" / f"epoch_{epoch:03d}.pt", weights_only=False)["model_state"]  # fmt: skip
        for name in ("0.weight", "0.bias"):
            assert torch.equal(state[name], source[name]), name
        assert not torch.equal(state["2.weight"], source["2.weight"])
    with pytest.raises(ConfigError, match="matches no parameter"):
        run_from_params(files, [1, 0], tmp_path / "model.py", {**fine, "freeze": "encoder.*"}, tmp_path / "x")  # fmt: skip
