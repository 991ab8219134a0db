"""The training loop: epochs over a RootIterableDataset on CPU, CUDA or DDP, with per-epoch
metrics, history, plots and checkpoints written into one run folder."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchdata.stateful_dataloader import StatefulDataLoader

from rootml.train.metrics import EpochMetrics
from rootml.train.plots import plot_history, plot_roc
from rootml.transforms import FlatLayout
from rootml.transforms.collection import layout_parts
from rootml.transforms.feed import call_model

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda:N" under torchrun -> the local rank's GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return torch.device(device)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Start torch.distributed when launched by torchrun (WORLD_SIZE > 1): nccl on GPU, gloo on
    CPU. Returns (rank, world_size)."""
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
    checkpoint_extra: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train `model` on the batches of `train` (a RootIterableDataset), validating on `val`.

    The model is called by rootml.transforms.feed.call_model: flat layout, features (B, F) float32
    (and the mask when forward takes a second argument); collection layout, the parts by name,
    as one dict, or in order. It returns (B, 1) probabilities (binary, binary cross-entropy) or (B, C) logits
    (C classes, cross-entropy). Losses are weighted by batch["weight"] times `class_weights`.
    An epoch is one pass over every training entry. Under torchrun the model is wrapped in DDP,
    ranks read disjoint shards, and since shards may differ by a batch, the loop runs inside
    DDP's Join context (ranks that run out shadow the others' all-reduces instead of hanging);
    metrics are summed over ranks and only rank 0 writes. Each epoch writes history.csv/json,
    plots/*.png and checkpoint.pt (+ checkpoints/epoch_NNN.pt) to `out_dir`; `resume=True`
    continues after the last completed epoch of out_dir/checkpoint.pt.
    Returns the history: one dict of metrics per epoch.
    """
    out = Path(out_dir)
    target = resolve_device(device)
    rank, world = init_distributed(target)
    model = model.to(target)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    history, start = [], 0
    if resume and (out / "checkpoint.pt").exists():
        state = torch.load(out / "checkpoint.pt", map_location=target, weights_only=False)
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        history, start = state.get("history", []), int(state["epoch"])
        torch.set_rng_state(state["rng_state"])  # dropout continues as if never interrupted
        log.info("resuming %s after epoch %d", out, start)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    weights = torch.tensor(class_weights, device=target) if class_weights else None
    cuda = target.type == "cuda"
    for epoch in range(start, epochs):
        begin = time.perf_counter()
        train.set_epoch(epoch)
        metrics = _run(
            wrapped,
            train,
            target,
            optimizer,
            num_workers,
            amp,
            weights,
            f"epoch {epoch + 1}/{epochs}",
            rank,
        )
        row = {"epoch": epoch + 1, **metrics.result("train")}
        if val is not None:
            # The bare module: no DDP collectives in evaluation, whatever each rank's batch count.
            val_metrics = _run(
                model, val, target, None, num_workers, amp, weights, "validation", rank
            )
            row.update(val_metrics.result("val"))
        seconds = time.perf_counter() - begin
        row.update(
            seconds=seconds, events_per_s=(row["train_events"] + row.get("val_events", 0)) / seconds
        )
        history.append(row)
        if rank == 0:
            _write_epoch(
                out,
                model,
                optimizer,
                history,
                val_metrics if val is not None else metrics,
                checkpoint_extra or {},
                train,
            )
        if on_epoch is not None:
            on_epoch(row)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in row.items()})
    if cuda:
        torch.cuda.synchronize()
    return history


def _run(
    model, dataset, device, optimizer, num_workers, amp, class_weights, title, rank
) -> EpochMetrics:
    training = optimizer is not None
    model.train(training)
    cuda = device.type == "cuda"
    loader = StatefulDataLoader(
        dataset, batch_size=None, num_workers=num_workers, pin_memory=cuda, persistent_workers=False
    )
    metrics: EpochMetrics | None = None
    layout_name = "flat" if isinstance(dataset.layout, FlatLayout) else "collection"
    keys = [
        key
        for array, mask, branches in layout_parts(dataset.layout)
        if branches
        for key in (array, mask)
    ]
    bar = _progress(dataset, title, rank)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    join = model.join() if ddp and training else contextlib.nullcontext()
    with join, torch.set_grad_enabled(training):
        for batch in loader:
            inputs = {key: batch[key].to(device, non_blocking=cuda) for key in keys}
            labels = batch["label"].to(device, non_blocking=cuda)
            weight = batch["weight"].to(device, non_blocking=cuda)
            with torch.autocast(device.type, enabled=amp):
                output = call_model(model, layout_name, inputs, getattr(model, "module", model))
            loss_per_event, probs = _loss(output.float(), labels)
            if class_weights is not None:
                weight = weight * class_weights[labels]
            loss = (loss_per_event * weight).sum() / weight.sum().clamp_min(1e-12)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if metrics is None:
                metrics = EpochMetrics(
                    output.shape[1] if output.ndim == 2 and output.shape[1] > 1 else 2, device
                )
            metrics.update((loss_per_event * weight).sum(), probs, labels, weight)
            bar.update(len(labels))
    bar.close()
    metrics = metrics or EpochMetrics(2, device)
    metrics.all_reduce()
    return metrics


def _loss(output: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-event loss and the probabilities the metrics use."""
    if output.ndim == 1 or output.shape[1] == 1:
        probs = output.reshape(-1).clamp(1e-7, 1 - 1e-7)
        return F.binary_cross_entropy(probs, labels.float(), reduction="none"), probs
    return F.cross_entropy(output, labels, reduction="none"), output.softmax(1)


def _progress(dataset: Any, title: str, rank: int):
    from tqdm import tqdm

    total = getattr(dataset, "num_entries", None)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return tqdm(
        total=total // world if total else None,
        desc=title,
        unit="ev",
        unit_scale=True,
        disable=rank != 0 or not sys.stderr.isatty(),
        leave=False,
    )


def _write_epoch(
    out: Path, model, optimizer, history, metrics: EpochMetrics, extra: dict, train
) -> None:
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    state = {
        "format": 1,
        "epoch": len(history),
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "history": history,
        "dataset_state": train.state_dict(),
        "metrics": history[-1],
        "rng_state": torch.get_rng_state(),
        **extra,
    }
    epoch_file = out / "checkpoints" / f"epoch_{len(history):03d}.pt"
    torch.save(state, epoch_file)
    tmp = out / "checkpoint.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(out / "checkpoint.pt")
    keys = list(history[-1])
    with open(out / "history.csv", "w") as csv:
        csv.write(",".join(keys) + "\n")
        for row in history:
            csv.write(",".join(str(row.get(k, "")) for k in keys) + "\n")
    (out / "history.json").write_text(json.dumps(history, indent=1))
    plot_history(history, out / "plots")
    if metrics.n_classes == 2:
        plot_roc(*metrics.roc(), out / "plots" / "roc.png")
