"""The training loop: epochs over a RootIterableDataset on CPU, CUDA or DDP, with per-epoch
metrics, history, plots and checkpoints written into one run folder."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rootml.errors import RootmlError
from rootml.progress import duration, say
from rootml.runfolder import BEST_FILE, CHECKPOINT_FILE, CHECKPOINTS_DIR
from rootml.runfolder import CheckpointKey as K
from rootml.train.checkpoint import load_checkpoint, save_checkpoint, write_history
from rootml.train.distributed import gather_arrays, init_distributed, resolve_device
from rootml.train.loop import SCALE_LIMIT, Loop  # noqa: F401  (SCALE_LIMIT: the documented limit)
from rootml.train.objectives import Classification
from rootml.train.schedule import EarlyStopping, LRSchedule

log = logging.getLogger(__name__)


def fit(
    model: torch.nn.Module,
    train: Any,
    val: Any = None,
    *,
    out_dir: str | os.PathLike,
    epochs: int = 5,
    lr: float = 1e-3,
    optimizer: torch.optim.Optimizer | None = None,
    device: str = "auto",
    num_workers: int = 0,
    amp: bool = False,
    class_weights: list[float] | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    record_entries: bool = False,
    checkpoint_extra: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    class_names: list[str] | None = None,
    title: str | None = None,
    score_train: bool = True,
    objective: Any = None,
    schedule: LRSchedule | None = None,
    early_stopping: EarlyStopping | None = None,
    in_memory: int = 0,
) -> list[dict[str, Any]]:
    """Train `model` on the batches of `train` (a RootIterableDataset), validating on `val`.

    The model is called by rootml.transforms.feed.call_model: flat layout, features (B, F) float32
    (and the mask when forward takes a second argument); collection layout, the parts by name, as
    one dict, or in order. A (B, 1) output is a probability (binary cross-entropy); a (B, C)
    output with C >= 2 are logits (softmax cross-entropy). Each event's loss is weighted by
    batch["weight"] times class_weights[label] (one per class, when given); the epoch's loss and
    accuracy are weighted means, its AUC the weighted ROC AUC (one-vs-rest mean for C > 2).

    An epoch is one pass over every training entry. device: "auto", "cpu", "cuda", "cuda:N";
    on CUDA batches come from pinned memory with non-blocking copies; amp=True runs the forward
    pass under torch.autocast (float16 with a GradScaler on CUDA, bfloat16 on CPU).

    Under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel and each rank
    reads its own shard of the work units, so ranks may get different numbers of batches (units
    differ in size, a cut keeps different numbers of entries). The training pass runs inside
    DDP's Join context: a rank that runs out of batches shadows the gradient all-reduces of the
    others until they finish too, so no rank hangs and no entry is dropped to even the counts;
    then every rank takes the parameters and optimiser state of the last rank to finish.
    Validation runs on the unwrapped module (no collectives). The metric sums and score
    histograms are then all-reduced, so every rank holds the metrics of all entries; only rank 0
    writes files.

    Inputs are used as the datasets give them: fit does not normalise. Build them as `rootml
    train` does, RootIterableDataset(..., specs=fit_specs(...), normalize="standard"), or scale
    inside the model: on raw physics values (HT ~ 500 GeV) a network trains badly (loss stuck
    high, AUC near 0.5). When an input branch of the first training batch has an RMS above
    SCALE_LIMIT (10), fit logs one warning naming the branches and their RMS, and trains on.

    Files in out_dir, after each epoch: history.csv, history.json, checkpoint.pt and
    checkpoints/epoch_NNN.pt (model, optimiser, AMP scaler, RNG and dataset state, history, plus
    `checkpoint_extra`), and plots/ (rootml.train.plots): loss, accuracy and AUC per epoch, ROC
    and background rejection curves, the score distributions of each class for train and
    validation with their KS p-values (the overtraining check), and roc.json/scores.json with
    the numbers drawn. class_names: a name per class for the plots (default background, signal
    / class N); title: the plots' context line (default: the run folder's name and the
    training files). score_train=True scores the training entries once more after the last
    epoch, with the final model in eval mode (one forward pass, not counted in the epoch's
    time), so the last overtraining check compares one model on both samples; before that, and
    with False, the train scores drawn are those made while training the epoch (weights
    changing, dropout on: a model with dropout then shows differences that are not
    overtraining). The legend says which. checkpoint_every=N (single process) also
    rewrites checkpoint.pt every N training steps with the DataLoader state and the metric sums
    so far. resume=True continues from out_dir/checkpoint.pt: after its last completed epoch,
    or at its step inside the epoch, with the same RNG state, so the result equals an
    uninterrupted run. record_entries=True writes debug/entries_epoch_NNN.npz (arrays
    "file_index", "entry", "rank": every training entry each rank trained on that epoch).
    on_epoch(row) is called after each epoch, on_step({"epoch", "step", "loss"}) after each
    training step (it may raise to stop the run). Progress (rootml.progress): a bar per pass on
    a terminal, else a log line every few seconds with events/s and ETA; after each epoch one
    line of a table (loss, accuracy, AUC, time, events/s). Returns the history: one dict per
    epoch (epoch, train_/val_ loss, accuracy, auc, events; seconds; events_per_s; lr, the
    learning rate of the epoch; steps).

    objective: rootml.train.objectives.Classification (the default, with class_weights and
    class_names) or Regression (float targets batch["target"]; metrics loss, bias, resolution
    per target; history plots every epoch, the regression plots after the last). schedule: a rootml.train.schedule.LRSchedule (learning rate
    per epoch; default constant `lr`). early_stopping: an EarlyStopping: stop after its patience
    epochs without improvement of its metric; the best epoch's checkpoint is also written as
    checkpoints/best.pt, and checkpoint.pt says "stopped" (a resumed run has nothing left).
    in_memory: bytes of batches kept from the first epoch so later epochs shuffle in memory
    (rootml.train.memory); 0 reads the files every epoch.
    Raises RootmlError when resuming a checkpoint taken inside an epoch under another world size
    or another in_memory mode, ModelError when class_weights do not match the model's classes.
    """
    out = Path(out_dir)
    target = resolve_device(device)
    rank, world = init_distributed(target)
    objective = objective or Classification(class_weights, class_names)
    loop = Loop(model.to(target), optimizer, lr, target, world, num_workers, amp, objective,
                in_memory, rank)  # fmt: skip
    run = _Run(out, loop, schedule or LRSchedule(lr, epochs), early_stopping, rank, world)
    history, start, partial = run.restore(resume)
    extra = checkpoint_extra or {}
    every = checkpoint_every if checkpoint_every and world == 1 else None
    if checkpoint_every and world > 1:
        log.warning("checkpoint_every is ignored under DDP: checkpoints at epoch ends only")
    for epoch in range(start if not run.stopped else epochs, epochs):
        begin = time.perf_counter() - (partial["seconds"] if partial else 0.0)
        if epoch > 0:  # in_memory: a resumed run reads its samples into memory first
            loop.fill_memory("train", train, rank)
            loop.fill_memory("val", val, rank)
        train.set_epoch(epoch)
        lr_now = run.schedule.apply(loop.optimizer, epoch)

        def save_partial(state: dict[str, Any], epoch: int = epoch, begin: float = begin) -> None:
            state["seconds"] = time.perf_counter() - begin
            checkpoint = {**run.state(epoch, history), K.PARTIAL: state}
            save_checkpoint(
                out, {**checkpoint, K.DATASET_STATE: state["loader_state"], **extra}, False
            )

        desc = f"epoch {epoch + 1}/{epochs} train"
        expect = _expected(train, history, "train_events", world)
        metrics, seen = loop.epoch(
            train, desc, rank, epoch, partial, every, save_partial, on_step, record_entries,
            expect, cache="train",
        )  # fmt: skip
        partial = None
        row = {"epoch": epoch + 1, **metrics.result("train")}
        val_metrics = None
        if val is not None:
            expect = _expected(val, history, "val_events", world)
            val_metrics, _ = loop.epoch(val, f"epoch {epoch + 1}/{epochs} validation", rank, total=expect, cache="val")  # fmt: skip
            row.update(val_metrics.result("val"))
        seconds = time.perf_counter() - begin
        events = row["train_events"] + row.get("val_events", 0)
        row.update(seconds=seconds, events_per_s=events / seconds if seconds > 0 else None,
                   lr=lr_now, steps=seen["steps"])  # fmt: skip
        history.append(row)
        improved = run.end_epoch(epoch, row)
        if record_entries:
            _write_entries(out, epoch + 1, gather_arrays(seen), rank)
        if rank == 0:
            run.save(epoch, history, {K.METRICS: row, K.DATASET_STATE: train.state_dict(), **extra}, improved)  # fmt: skip
            if epoch == start:
                say(_epoch_line(None, val is not None, objective.columns))
            say(_epoch_line(row, val is not None, objective.columns, epochs))
        last = run.stopped or epoch == epochs - 1
        note = "while training"
        if score_train and last:
            metrics, note = _score_train(loop, train, row, rank, world), "final model"
        if rank == 0:
            context = title if title is not None else _context(out, train)
            objective.plot(out / "plots", history, metrics, val_metrics, context, note, last)
        if on_epoch is not None:
            on_epoch(row)
        if run.stopped:
            log.info("early stopping after epoch %d: %s best at epoch %d (%.6g)", epoch + 1,
                     run.monitor.metric, run.monitor.best_epoch, run.monitor.best)  # fmt: skip
            break
    return history


def _score_train(loop: Loop, train: Any, row: dict[str, Any], rank: int, world: int) -> Any:
    """The training entries scored by the final model: the overtraining check compares one model
    on both samples (the epoch's own train scores came from weights that kept changing, with
    dropout on)."""
    expect = row["train_events"] // world
    return loop.epoch(train, "scoring the training entries", rank, total=expect, cache="train")[0]


def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    *,
    out_dir: str | os.PathLike,
    objective: Any = None,
    device: str = "auto",
    num_workers: int = 0,
    epoch: int = 0,
    name: str = "test",
    title: str | None = None,
) -> Any:
    """Score `dataset` (e.g. the test set) once with `model` in eval mode; the metrics (all
    ranks' entries) are returned (EpochMetrics or RegressionMetrics: .result("test") gives the
    numbers) and drawn by rank 0 into out_dir/plots/<name>/ (ROC, rejection and score plots,
    or the regression plots). epoch: the model's epoch, for the titles."""
    out = Path(out_dir)
    target = resolve_device(device)
    rank, world = init_distributed(target)
    objective = objective or Classification()
    loop = Loop(model.to(target), None, 0.0, target, 1, num_workers, False, objective)
    total = _expected(dataset, [], "", world)
    metrics, _ = loop.epoch(dataset, f"scoring the {name} entries", rank, total=total)
    if rank == 0:
        context = title if title is not None else _context(out, dataset)
        objective.plot_test(out / "plots" / name, metrics, epoch, context)
    return metrics


class _Run:
    """The state of a run besides the model's: schedule, early stopping, checkpoints."""

    def __init__(self, out: Path, loop: Loop, schedule: LRSchedule, stopping, rank, world):
        self.out, self.loop, self.schedule, self.rank, self.world = out, loop, schedule, rank, world
        self.stopping = stopping
        self.monitor = stopping.monitor() if stopping is not None else None
        self.stopped = False

    def restore(self, resume: bool) -> tuple[list[dict[str, Any]], int, dict | None]:
        """(history, completed epochs, inside-epoch state) of out/checkpoint.pt when resuming."""
        if not (resume and (self.out / CHECKPOINT_FILE).exists()):
            return [], 0, None
        state = load_checkpoint(self.out / CHECKPOINT_FILE, self.loop.device)
        history, start, partial = self.loop.restore(state)
        self.schedule.load_state_dict(state.get(K.SCHEDULE))
        if self.monitor is not None:
            self.monitor.load_state_dict(state.get(K.MONITOR))
        self.stopped = bool(state.get(K.STOPPED))
        if partial is not None and self.world > 1:
            raise RootmlError(
                f"{self.out / 'checkpoint.pt'} was taken inside epoch {start + 1} by one "
                f"process; resume it with one process, or from checkpoints/epoch_{start:03d}.pt"
            )
        log.info("resuming %s after epoch %d%s", self.out, start, " (inside it)" if partial else "")
        return history, start, partial

    def state(self, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        monitor = self.monitor.state_dict() if self.monitor is not None else None
        return {**self.loop.state(), K.EPOCH: epoch, K.HISTORY: history, K.STOPPED: self.stopped,
                K.SCHEDULE: self.schedule.state_dict(), K.MONITOR: monitor}  # fmt: skip

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> bool:
        """Update the schedule and early stopping; True when the epoch is the best so far."""
        self.schedule.end_epoch(epoch, row)
        if self.monitor is None:
            return False
        improved = self.monitor.update(row)
        self.stopped = self.monitor.bad >= self.stopping.patience
        return improved

    def save(self, epoch: int, history, extra: dict[str, Any], best: bool) -> None:
        """checkpoint.pt and checkpoints/epoch_NNN.pt; checkpoints/best.pt when `best`."""
        save_checkpoint(self.out, {**self.state(epoch + 1, history), **extra}, True)
        write_history(self.out, history)
        if best:
            tmp = self.out / f"{BEST_FILE}.tmp"
            shutil.copyfile(self.out / CHECKPOINTS_DIR / f"epoch_{epoch + 1:03d}.pt", tmp)
            os.replace(tmp, self.out / BEST_FILE)


def _expected(dataset: Any, history: list[dict[str, Any]], key: str, world: int) -> int | None:
    """Events one rank sees in a pass: the last epoch's count when there is one, else the
    selected entries (None with a cut or resampling: how many pass is not known before reading)."""
    if history and history[-1].get(key):
        return history[-1][key] // world
    if (
        getattr(dataset, "cut", None)
        or getattr(dataset, "resampling", None)
        or not getattr(dataset, "num_entries", None)
    ):
        return None
    return dataset.num_entries // world


def _context(out: Path, dataset: Any) -> str:
    """The plots' context line: the run folder's name and the training files."""
    files = [os.path.basename(str(f).rstrip("/")) for f in getattr(dataset, "files", [])]
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    tree = getattr(dataset, "tree", None)
    return f"run '{out.resolve().name}', " + (f"tree '{tree}' of {shown}" if tree else shown)


_SHORT = {"accuracy": "acc", "auc": "AUC", "resolution": "res", "bias": "bias"}


def _epoch_line(
    row: dict[str, Any] | None, with_val: bool, columns=("loss", "accuracy", "auc"), epochs=0
) -> str:
    """One row of the epoch table (the header when `row` is None): loss and the objective's
    other `columns`, train then validation, time and events/s."""
    splits = ("train", "val") if with_val else ("train",)
    if row is None:
        parts = [
            f"{split + ' loss':>{10 if split == 'train' else 8}} "
            + " ".join(f"{_SHORT.get(c.split('_')[0], c):>6}" for c in columns[1:])
            for split in splits
        ]
        return f"{'epoch':>7} | " + " | ".join(parts) + f" | {'time':>8} {'events/s':>9}"
    parts = [
        f"{row[f'{split}_{columns[0]}']:>{10 if split == 'train' else 8}.4f} "
        + " ".join(f"{row[f'{split}_{c}']:>6.4f}" for c in columns[1:])
        for split in splits
    ]
    rate = f"{row['events_per_s']:,.0f}" if row.get("events_per_s") else "-"
    return (
        f"{row['epoch']:>3}/{epochs:<3} | "
        + " | ".join(parts)
        + f" | {duration(row['seconds']):>8} {rate:>9}"
    )


def _write_entries(out: Path, epoch: int, per_rank: list[dict[str, np.ndarray]], rank: int) -> None:
    """debug/entries_epoch_NNN.npz: every (file index, entry) trained on, and by which rank."""
    if rank != 0:
        return
    (out / "debug").mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "debug" / f"entries_epoch_{epoch:03d}.npz",
        file_index=np.concatenate([r["file"] for r in per_rank]),
        entry=np.concatenate([r["entry"] for r in per_rank]),
        rank=np.concatenate([np.full(len(r["file"]), i) for i, r in enumerate(per_rank)]),
    )
