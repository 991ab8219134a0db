"""One pass over a sample: the model, optimiser, AMP scaler and device settings shared by the
training, validation and test passes of rootml.train.fit, reading from the files (a
StatefulDataLoader) or from memory (rootml.train.memory)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torchdata.stateful_dataloader import StatefulDataLoader

from rootml.errors import RootmlError
from rootml.progress import Progress
from rootml.runfolder import CheckpointKey as K
from rootml.train.checkpoint import restore_rng, rng_state
from rootml.train.distributed import sync_after_join
from rootml.train.memory import MemoryCache
from rootml.transforms.collection import layout_parts
from rootml.transforms.feed import call_model

log = logging.getLogger(__name__)

# An input branch whose values have an RMS above this in the first batch is "far from unit scale".
SCALE_LIMIT = 10.0


class Loop:
    """Runs passes of `model` for an objective (rootml.train.objectives). Parameters with
    requires_grad False (frozen) are left out of the default Adam optimiser."""

    def __init__(self, model, optimizer, lr, device, world, num_workers, amp, objective,
                 memory: int = 0, rank: int = 0):  # fmt: skip
        self.model, self.device, self.num_workers, self.amp = model, device, num_workers, amp
        self.objective = objective
        self.cuda = device.type == "cuda"
        self.check_scale = True  # on the first training batch (_warn_unscaled)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optimizer or torch.optim.Adam(trainable, lr=lr)
        self.wrapped = model
        if world > 1:
            ids = [device.index] if self.cuda else None
            self.wrapped = DistributedDataParallel(model, device_ids=ids)
        # float16 gradients underflow without loss scaling; bfloat16 (CPU autocast) does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and self.cuda)
        self.memory = MemoryCache(memory, rank)

    def state(self) -> dict[str, Any]:
        return {
            K.MODEL_STATE: self.model.state_dict(),
            K.OPTIMIZER_STATE: self.optimizer.state_dict(),
            K.SCALER_STATE: self.scaler.state_dict(),
            K.RNG_STATE: rng_state(),
        }

    def restore(self, state: dict[str, Any]) -> tuple[list[dict[str, Any]], int, dict | None]:
        """Load a checkpoint; returns (history, completed epochs, inside-epoch state or None)."""
        self.model.load_state_dict(state[K.MODEL_STATE])
        self.optimizer.load_state_dict(state[K.OPTIMIZER_STATE])
        if state.get(K.SCALER_STATE):
            self.scaler.load_state_dict(state[K.SCALER_STATE])
        restore_rng(state.get(K.RNG_STATE))  # dropout continues as if never interrupted
        return list(state.get(K.HISTORY, [])), int(state[K.EPOCH]), state.get(K.PARTIAL)

    def loader(self, dataset: Any, epoch: int | None) -> StatefulDataLoader:
        # The loader draws its workers' base seed from its own generator, not the global one:
        # otherwise making a loader would shift dropout's random stream, and a run resumed inside
        # an epoch (its loader made after the generator state is restored) would differ.
        seeds = torch.Generator().manual_seed(getattr(dataset, "seed", 0) * 100_003 + (epoch or 0))
        with warnings.catch_warnings():
            # torchdata calls torch.set_vital, which torch deprecates: nothing the user can act on.
            warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)
            return StatefulDataLoader(
                dataset,
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.cuda,
                generator=seeds,
            )

    def fill_memory(self, name: str, dataset: Any, rank: int) -> None:
        """Read `dataset`'s shard of epoch 1 into memory without training, when in_memory wants
        it and does not hold it (a resumed run, or a first epoch resumed inside). None: none."""
        if dataset is None or not self.memory.wanted(name):
            return
        dataset.set_epoch(0)
        self.memory.start(name)
        with Progress(f"reading the {name} sample into memory", None, "events",
                      show=None if rank == 0 else False) as bar:  # fmt: skip
            for batch in self.loader(dataset, 0):
                self.memory.add(name, batch)
                bar.update(len(batch["entry"]))
        self.memory.finish(name)

    def _source(self, dataset, cache, training, epoch, partial) -> tuple[Iterable, Any, bool]:
        """(batches, the loader or None when from memory, whether this pass fills memory)."""
        if cache is not None and self.memory.ready(cache):
            if partial is not None and not partial.get("memory"):
                raise RootmlError("this checkpoint was taken reading files: resume it with the same in_memory")  # fmt: skip
            shuffle = training and getattr(dataset, "shuffle", False)
            batches = self.memory.batches(
                cache, dataset.batch_size, dataset.seed if shuffle else None, epoch or 0,
                partial["step"] if partial else 0,
            )  # fmt: skip
            return batches, None, False
        loader = self.loader(dataset, epoch)
        if partial is not None:
            if partial.get("memory"):
                raise RootmlError("this checkpoint was taken in memory: resume it with the same in_memory")  # fmt: skip
            loader.load_state_dict(partial["loader_state"])
        filling = cache is not None and partial is None and self.memory.wanted(cache)
        if filling:
            self.memory.start(cache)
        return loader, loader, filling

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
        cache: str | None = None,
    ) -> tuple[Any, dict[str, np.ndarray]]:
        """One pass over `dataset`: training when `epoch` is given, else evaluation. Returns the
        metrics (all-reduced over ranks) and, when `record`, the (file, entry) pairs seen.
        total: the events this rank is expected to see (the progress bar's end), if known.
        cache: the sample's name in memory (in_memory), or None to always read the files."""
        training = epoch is not None
        module = self.wrapped if training else self.model
        module.train(training)
        batches, loader, filling = self._source(dataset, cache, training, epoch, partial)
        metrics, step, seen = None, 0, []
        if partial is not None:
            metrics = self.objective.metrics_from_state(partial["metrics"], self.device)
            step, seen = partial["step"], list(partial.get("seen", []))
        layout = dataset.layout.name
        keys = [k for a, m, branches in layout_parts(dataset.layout) if branches for k in (a, m)]
        if metrics is not None and total is not None:  # a resumed epoch: what is left of it
            total = max(total - int(metrics.sums[-1].item()), 0)
        bar = Progress(title, total, "events", show=None if rank == 0 else False)
        check = training and rank == 0 and self.check_scale
        self.check_scale = self.check_scale and not training
        join = module.join() if training and module is not self.model else contextlib.nullcontext()
        with join, torch.set_grad_enabled(training):
            for batch in batches:
                if filling:
                    self.memory.add(cache, batch)
                if check:
                    check = _warn_unscaled(dataset, batch)
                if record:
                    seen.append(np.stack([batch["file"].numpy(), batch["entry"].numpy()]))
                loss, metrics = self._step(module, layout, keys, batch, training, metrics)
                bar.update(len(batch["entry"]))
                if not training:
                    continue
                step += 1
                if on_step is not None:
                    on_step({"epoch": epoch + 1, "step": step, "loss": float(loss)})
                if every and step % every == 0 and save_partial is not None:
                    state = {"step": step, "seen": seen, "memory": loader is None,
                             "loader_state": loader.state_dict() if loader is not None else None}  # fmt: skip
                    save_partial({**state, "metrics": metrics.state_dict()})
        bar.close()
        if filling:
            self.memory.finish(cache)
        if training and module is not self.model:
            sync_after_join(self.optimizer, self.scaler, step)
        metrics = metrics or self.objective.empty_metrics(self.device)
        metrics.all_reduce()
        pairs = np.concatenate(seen, axis=1) if seen else np.zeros((2, 0), dtype=np.int64)
        return metrics, {"file": pairs[0], "entry": pairs[1], "steps": step}

    def _step(self, module, layout, keys, batch, training, metrics):
        """Forward (and backward) of one batch; updates and returns the metrics."""
        moved = {
            key: batch[key].to(self.device, non_blocking=self.cuda)
            for key in (*keys, "label", "weight", *(("target",) if "target" in batch else ()))
        }
        inputs = {key: moved[key] for key in keys}
        with torch.autocast(self.device.type, enabled=self.amp):
            output = call_model(module, layout, inputs, self.model)
        # The loss in float32 outside autocast: BCE on float16 probabilities is not safe.
        output = output.float()
        per_event, weight, info = self.objective.loss(output, moved, moved["weight"])
        if metrics is None:
            metrics = self.objective.new_metrics(output, self.device)
        weighted = (per_event * weight).sum()
        loss = weighted / weight.sum().clamp_min(1e-12)
        if training:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.objective.update(metrics, weighted, info, weight)
        return loss.detach(), metrics


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
