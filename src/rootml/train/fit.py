"""The training loop: epochs over a RootIterableDataset on CPU, CUDA or DDP, with per-epoch
metrics, history, plots and checkpoints written into one run folder."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torchdata.stateful_dataloader import StatefulDataLoader

from rootml.errors import ModelError, RootmlError
from rootml.progress import Progress, duration, say
from rootml.runfolder import CHECKPOINT_FILE, CHECKPOINTS_DIR, CheckpointKey
from rootml.train.checkpoint import (
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
    write_history,
)
from rootml.train.distributed import (
    gather_arrays,
    init_distributed,
    resolve_device,
    sync_after_join,
)
from rootml.train.metrics import EpochMetrics
from rootml.train.plots import class_names as display_names
from rootml.train.plots import plot_classifier, plot_history
from rootml.transforms.collection import layout_parts
from rootml.transforms.feed import call_model

log = logging.getLogger(__name__)

# An input branch whose values have an RMS above this in the first batch is "far from unit scale".
SCALE_LIMIT = 10.0


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
    epoch (epoch, train_/val_ loss, accuracy, auc, events; seconds; events_per_s).
    Raises RootmlError when resuming a checkpoint taken inside an epoch under another world size,
    ModelError when class_weights do not match the model's classes.
    """
    out = Path(out_dir)
    target = resolve_device(device)
    rank, world = init_distributed(target)
    loop = _Loop(model.to(target), optimizer, lr, target, world, num_workers, amp, class_weights)
    history, start, partial = [], 0, None
    if resume and (out / CHECKPOINT_FILE).exists():
        history, start, partial = _restore(loop, out, target, world)
    if checkpoint_every and world > 1:
        log.warning("checkpoint_every is ignored under DDP: checkpoints at epoch ends only")
    run = _Run(
        out, loop, train, val, history, rank, world, epochs, checkpoint_extra or {},
        every=checkpoint_every if checkpoint_every and world == 1 else None, on_step=on_step,
        record_entries=record_entries, score_train=score_train, class_names=class_names,
        title=title,
    )  # fmt: skip
    for epoch in range(start, epochs):
        row = run.epoch(epoch, partial, first=epoch == start)
        partial = None
        if on_epoch is not None:
            on_epoch(row)
    return history


def _restore(loop: _Loop, out: Path, device: torch.device, world: int) -> tuple[list, int, Any]:
    """(history, completed epochs, inside-epoch state or None) of out/checkpoint.pt, loaded into
    the loop. Raises RootmlError for a checkpoint taken inside an epoch under DDP."""
    path = out / CHECKPOINT_FILE
    history, start, partial = loop.restore(load_checkpoint(path, device))
    if partial is not None and world > 1:
        raise RootmlError(
            f"{path} was taken inside epoch {start + 1} by one process; resume it with one "
            f"process, or from {CHECKPOINTS_DIR}/epoch_{start:03d}.pt"
        )
    log.info("resuming %s after epoch %d%s", out, start, " (inside it)" if partial else "")
    return history, start, partial


@dataclass
class _Run:
    """One call of fit: the loop, the datasets, the history so far and the settings of its
    epochs; `epoch` runs one and writes its checkpoint, history line and plots."""

    out: Path
    loop: _Loop
    train: Any
    val: Any
    history: list[dict[str, Any]]
    rank: int
    world: int
    epochs: int
    extra: dict[str, Any]
    every: int | None = None
    on_step: Callable[[dict[str, Any]], None] | None = None
    record_entries: bool = False
    score_train: bool = True
    class_names: list[str] | None = None
    title: str | None = None

    def epoch(self, epoch: int, partial: dict[str, Any] | None, first: bool) -> dict[str, Any]:
        """Train (from `partial`, a checkpoint's inside-epoch state, if any) and validate one
        epoch; returns its history row."""
        begin = time.perf_counter() - (partial["seconds"] if partial else 0.0)
        self.train.set_epoch(epoch)
        expect = _expected(self.train, self.history, "train_events", self.world)
        save = functools.partial(self._save_partial, epoch=epoch, begin=begin)
        metrics, seen = self.loop.epoch(
            self.train, f"epoch {epoch + 1}/{self.epochs} train", self.rank, epoch, partial,
            self.every, save, self.on_step, self.record_entries, expect,
        )  # fmt: skip
        row = {"epoch": epoch + 1, **metrics.result("train")}
        val_metrics = None
        if self.val is not None:
            expect = _expected(self.val, self.history, "val_events", self.world)
            title = f"epoch {epoch + 1}/{self.epochs} validation"
            val_metrics, _ = self.loop.epoch(self.val, title, self.rank, total=expect)
            row.update(val_metrics.result("val"))
        seconds = time.perf_counter() - begin
        events = row["train_events"] + row.get("val_events", 0)
        row.update(seconds=seconds, events_per_s=events / seconds if seconds > 0 else None)
        self.history.append(row)
        if self.record_entries:
            _write_entries(self.out, epoch + 1, gather_arrays(seen), self.rank)
        if self.rank == 0:
            self._save_epoch(row, first)
        self._plot(epoch, row, metrics, val_metrics)
        return row

    def _save_partial(self, state: dict[str, Any], epoch: int, begin: float) -> None:
        """checkpoint.pt inside an epoch (checkpoint_every): where the loader stands."""
        state["seconds"] = time.perf_counter() - begin
        checkpoint = {
            **self.loop.state(),
            CheckpointKey.EPOCH: epoch,
            CheckpointKey.HISTORY: self.history,
        }
        checkpoint.update(
            {CheckpointKey.PARTIAL: state, CheckpointKey.DATASET_STATE: state["loader_state"]}
        )
        save_checkpoint(self.out, {**checkpoint, **self.extra}, False)

    def _save_epoch(self, row: dict[str, Any], first: bool) -> None:
        """The epoch's checkpoint, history files and line of the epoch table (rank 0)."""
        checkpoint = {
            **self.loop.state(),
            CheckpointKey.EPOCH: row["epoch"],
            CheckpointKey.HISTORY: self.history,
        }
        checkpoint.update(
            {CheckpointKey.METRICS: row, CheckpointKey.DATASET_STATE: self.train.state_dict()}
        )
        save_checkpoint(self.out, {**checkpoint, **self.extra}, True)
        write_history(self.out, self.history)
        if first:
            say(_epoch_line(None, self.val is not None))
        say(_epoch_line(row, self.val is not None, self.epochs))

    def _plot(self, epoch: int, row: dict[str, Any], metrics: Any, val_metrics: Any) -> None:
        """The run's plots after an epoch; after the last, the training entries are scored
        again first (score_train), so the overtraining check compares one model on both."""
        note = "while training"
        if self.score_train and epoch == self.epochs - 1:
            # The epoch's own train scores came from weights that kept changing, dropout on.
            expect = row["train_events"] // self.world
            title = "scoring the training entries"
            metrics, _ = self.loop.epoch(self.train, title, self.rank, total=expect)
            note = "final model"
        if self.rank == 0:
            context = self.title if self.title is not None else _context(self.out, self.train)
            folder = self.out / "plots"
            _plot(folder, self.history, metrics, val_metrics, self.class_names, context, note)


class _Loop:
    """The model, optimiser and device settings shared by the training and validation passes."""

    def __init__(self, model, optimizer, lr, device, world, num_workers, amp, class_weights):
        self.model, self.device, self.num_workers, self.amp = model, device, num_workers, amp
        self.cuda = device.type == "cuda"
        self.check_scale = True  # on the first training batch (_warn_unscaled)
        self.optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
        self.wrapped = model
        if world > 1:
            ids = [device.index] if self.cuda else None
            self.wrapped = DistributedDataParallel(model, device_ids=ids)
        # float16 gradients underflow without loss scaling; bfloat16 (CPU autocast) does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and self.cuda)
        self.class_weights = (
            torch.tensor(class_weights, dtype=torch.float32, device=device)
            if class_weights
            else None
        )

    def state(self) -> dict[str, Any]:
        return {
            CheckpointKey.MODEL_STATE: self.model.state_dict(),
            CheckpointKey.OPTIMIZER_STATE: self.optimizer.state_dict(),
            CheckpointKey.SCALER_STATE: self.scaler.state_dict(),
            CheckpointKey.RNG_STATE: rng_state(),
        }

    def restore(self, state: dict[str, Any]) -> tuple[list[dict[str, Any]], int, dict | None]:
        """Load a checkpoint; returns (history, completed epochs, inside-epoch state or None)."""
        self.model.load_state_dict(state[CheckpointKey.MODEL_STATE])
        self.optimizer.load_state_dict(state[CheckpointKey.OPTIMIZER_STATE])
        if state.get(CheckpointKey.SCALER_STATE):
            self.scaler.load_state_dict(state[CheckpointKey.SCALER_STATE])
        restore_rng(state.get(CheckpointKey.RNG_STATE))  # dropout continues as if never interrupted
        return (
            list(state.get(CheckpointKey.HISTORY, [])),
            int(state[CheckpointKey.EPOCH]),
            state.get(CheckpointKey.PARTIAL),
        )

    def epoch(
        self,
        dataset: Any,
        title: str,
        rank: int,
        epoch: int | None = None,
        partial: dict[str, Any] | None = None,
        every: int | None = None,
        save_partial: Callable[[dict[str, Any]], None] | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        record: bool = False,
        total: int | None = None,
    ) -> tuple[EpochMetrics, dict[str, np.ndarray]]:
        """One pass over `dataset`: training when `epoch` is given, else evaluation. Returns the
        metrics (all-reduced over ranks) and, when `record`, the (file, entry) pairs seen.
        total: the events this rank is expected to see (the progress bar's end), if known."""
        training = epoch is not None
        module = self.wrapped if training else self.model
        module.train(training)
        # The loader draws its workers' base seed from its own generator, not the global one:
        # otherwise making a loader would shift dropout's random stream, and a run resumed inside
        # an epoch (its loader made after the generator state is restored) would differ.
        seeds = torch.Generator().manual_seed(getattr(dataset, "seed", 0) * 100_003 + (epoch or 0))
        with warnings.catch_warnings():
            # torchdata calls torch.set_vital, which torch deprecates: nothing the user can act on.
            warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)
            loader = StatefulDataLoader(
                dataset,
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.cuda,
                generator=seeds,
            )
        metrics, step, seen = None, 0, []
        if partial is not None:
            loader.load_state_dict(partial["loader_state"])
            metrics = EpochMetrics.from_state_dict(partial["metrics"], self.device)
            step, seen = partial["step"], list(partial.get("seen", []))
        layout = dataset.layout.name
        keys = [k for a, m, branches in layout_parts(dataset.layout) if branches for k in (a, m)]
        if metrics is not None and total is not None:  # a resumed epoch: what is left of it
            total = max(total - int(metrics.sums[3].item()), 0)
        bar = Progress(title, total, "events", show=None if rank == 0 else False)
        check = training and rank == 0 and self.check_scale
        self.check_scale = self.check_scale and not training
        join = module.join() if training and module is not self.model else contextlib.nullcontext()
        with join, torch.set_grad_enabled(training):
            for batch in loader:
                if check:
                    check = _warn_unscaled(dataset, batch)
                if record:
                    seen.append(np.stack([batch["file"].numpy(), batch["entry"].numpy()]))
                loss, metrics = self._step(module, layout, keys, batch, training, metrics)
                bar.update(len(batch["label"]))
                if not training:
                    continue
                step += 1
                if on_step is not None:
                    on_step({"epoch": epoch + 1, "step": step, "loss": float(loss)})
                if every and step % every == 0 and save_partial is not None:
                    state = {"step": step, "loader_state": loader.state_dict(), "seen": seen}
                    save_partial({**state, "metrics": metrics.state_dict()})
        bar.close()
        if training and module is not self.model:
            sync_after_join(self.optimizer, self.scaler, step)
        metrics = metrics or EpochMetrics(2, self.device)
        metrics.all_reduce()
        pairs = np.concatenate(seen, axis=1) if seen else np.zeros((2, 0), dtype=np.int64)
        return metrics, {"file": pairs[0], "entry": pairs[1]}

    def _step(self, module, layout, keys, batch, training, metrics):
        """Forward (and backward) of one batch; updates and returns the metrics."""
        inputs = {key: batch[key].to(self.device, non_blocking=self.cuda) for key in keys}
        labels = batch["label"].to(self.device, non_blocking=self.cuda)
        weight = batch["weight"].to(self.device, non_blocking=self.cuda)
        with torch.autocast(self.device.type, enabled=self.amp):
            output = call_model(module, layout, inputs, self.model)
        # The loss in float32 outside autocast: BCE on float16 probabilities is not safe.
        loss_per_event, probs = _loss(output.float(), labels)
        if metrics is None:
            classes = output.shape[1] if output.ndim == 2 and output.shape[1] > 1 else 2
            self._check_classes(classes)
            metrics = EpochMetrics(classes, self.device)
        if self.class_weights is not None:
            weight = weight * self.class_weights[labels]
        weighted = (loss_per_event * weight).sum()
        loss = weighted / weight.sum().clamp_min(1e-12)
        if training:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        metrics.update(weighted, probs, labels, weight)
        return loss.detach(), metrics

    def _check_classes(self, classes: int) -> None:
        if self.class_weights is not None and len(self.class_weights) != classes:
            raise ModelError(
                f"{len(self.class_weights)} class weights for a model of {classes} classes"
            )


def _loss(output: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-event loss (B,) and the probabilities the metrics use: (B,) for one output column
    (a probability: binary cross-entropy), (B, C) softmax for C columns (cross-entropy)."""
    if output.ndim == 1 or output.shape[1] == 1:
        probs = output.reshape(-1).clamp(1e-7, 1 - 1e-7)
        return F.binary_cross_entropy(probs, labels.float(), reduction="none"), probs
    return F.cross_entropy(output, labels, reduction="none"), output.softmax(1)


def _plot(folder, history, train, val, class_names, context, train_scored) -> None:
    """The run's plots after an epoch (rootml.train.plots)."""
    names = display_names(train.n_classes, class_names)
    plot_history(history, folder, context)
    plot_classifier(train, val, folder, history[-1]["epoch"], names, context, train_scored)


def _expected(dataset: Any, history: list[dict[str, Any]], key: str, world: int) -> int | None:
    """Events one rank sees in a pass: the last epoch's count when there is one, else the
    selected entries (None with a cut: how many pass it is not known before reading)."""
    if history and history[-1].get(key):
        return history[-1][key] // world
    if getattr(dataset, "cut", None) or not getattr(dataset, "num_entries", None):
        return None
    return dataset.num_entries // world


def _warn_unscaled(dataset: Any, batch: dict[str, Any]) -> bool:
    """Log one warning when input branches of `batch` have an RMS (over all their real values:
    every column or item, padding left out) above SCALE_LIMIT; returns False (check done)."""
    sums: dict[str, list[float]] = {}  # branch -> [sum of squares, values]
    for array, mask, branches in layout_parts(dataset.layout):
        if not branches:
            continue
        values, real = batch[array].double(), batch[mask]
        real = (real.unsqueeze(1) if values.ndim == 3 else real).expand_as(values)
        axes = [d for d in range(values.ndim) if d != 1]  # all but the branch axis
        squares = torch.where(real, values, 0.0).square().sum(axes).tolist()
        for branch, square, count in zip(branches, squares, real.sum(axes).tolist()):
            total = sums.setdefault(branch, [0.0, 0])
            total[0], total[1] = total[0] + square, total[1] + count
    rms = {b: (square / count) ** 0.5 for b, (square, count) in sums.items() if count}
    large = sorted(((v, b) for b, v in rms.items() if v > SCALE_LIMIT), reverse=True)
    if large:
        listed = ", ".join(f"{b} {v:.3g}" for v, b in large[:5])
        more = f" and {len(large) - 5} more" if len(large) > 5 else ""
        log.warning(
            "the inputs are far from unit scale (RMS in the first batch: %s%s; %d of %d branches "
            "above %g): networks train badly on such values (loss stuck, AUC near 0.5). "
            'Standardise them as `rootml train` does: RootIterableDataset(..., specs=fit_specs(...), '
            'normalize="standard"), or scale inside the model.',
            listed, more, len(large), len(rms), SCALE_LIMIT,
        )  # fmt: skip
    return False


def _context(out: Path, dataset: Any) -> str:
    """The plots' context line: the run folder's name and the training files."""
    files = [os.path.basename(str(f).rstrip("/")) for f in getattr(dataset, "files", [])]
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    tree = getattr(dataset, "tree", None)
    return f"run '{out.resolve().name}', " + (f"tree '{tree}' of {shown}" if tree else shown)


def _epoch_line(row: dict[str, Any] | None, with_val: bool, epochs: int = 0) -> str:
    """One row of the epoch table (the header when `row` is None)."""
    if row is None:
        val = f" | {'val loss':>8} {'acc':>6} {'AUC':>6}" if with_val else ""
        return f"{'epoch':>7} | {'train loss':>10} {'acc':>6} {'AUC':>6}{val} | {'time':>8} {'events/s':>9}"  # fmt: skip
    val = ""
    if with_val:
        val = f" | {row['val_loss']:>8.4f} {row['val_accuracy']:>6.4f} {row['val_auc']:>6.4f}"
    rate = f"{row['events_per_s']:,.0f}" if row.get("events_per_s") else "-"
    return (
        f"{row['epoch']:>3}/{epochs:<3} | {row['train_loss']:>10.4f} {row['train_accuracy']:>6.4f} "
        f"{row['train_auc']:>6.4f}{val} | {duration(row['seconds']):>8} {rate:>9}"
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
