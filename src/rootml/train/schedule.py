"""Learning rate per epoch and early stopping, as params.json sets them.

The learning rate of epoch e (0-based) is lr x warm-up x schedule x plateau factor:

- warm-up (warmup_epochs W): (e + 1) / (W + 1) for e < W, then 1 (torch's LinearLR with
  start_factor 1 / (W + 1) over W epochs);
- "cosine": with E = epochs - W epochs after the warm-up and e' = e - W,
  lr_min / lr + (1 - lr_min / lr) (1 + cos(pi e' / (E - 1))) / 2: lr at the first epoch after the
  warm-up, lr_min at the last (torch's CosineAnnealingLR with T_max = E - 1);
- "step": lr_gamma ** (e' // lr_step) (torch's StepLR);
- "plateau": x lr_gamma after more than lr_patience epochs in a row without improvement of the
  monitored metric (torch's ReduceLROnPlateau with an absolute threshold min_delta), counted
  from the end of the warm-up.

Early stopping watches one history metric ("val_loss" by default; "train_loss" without a
validation set): an epoch improves on the best one when it is better by more than min_delta in
the direction of `mode` ("min", or "max" for accuracy and AUC); training stops once `patience`
epochs in a row have not improved. The best epoch's checkpoint is kept as checkpoints/best.pt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rootml.errors import ConfigError

SCHEDULES = (None, "cosine", "step", "plateau")


def default_mode(metric: str) -> str:
    return "max" if metric.endswith(("auc", "accuracy")) else "min"


class Monitor:
    """The best value of a metric so far and the epochs since it improved."""

    def __init__(self, metric: str, mode: str | None = None, min_delta: float = 0.0):
        self.metric, self.mode = metric, mode or default_mode(metric)
        if self.mode not in ("min", "max"):
            raise ConfigError(f"early_stopping mode must be 'min' or 'max', not {mode!r}")
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.best_epoch = 0
        self.bad = 0

    def update(self, row: dict[str, Any]) -> bool:
        """Take the epoch's history row; True when it improves on the best so far."""
        if self.metric not in row:
            known = ", ".join(k for k in row if k.startswith(("train_", "val_")))
            raise ConfigError(f"no metric {self.metric!r} to monitor; the history has {known}")
        value = float(row[self.metric])
        sign = 1.0 if self.mode == "min" else -1.0
        improved = not math.isnan(value) and (
            self.best is None or sign * (self.best - value) > self.min_delta
        )
        if improved:
            self.best, self.best_epoch, self.bad = value, int(row["epoch"]), 0
        else:
            self.bad += 1
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.best, self.best_epoch, self.bad = state["best"], state["best_epoch"], state["bad"]


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without improvement of `metric` (see the module docstring)."""

    metric: str = "val_loss"
    patience: int = 5
    mode: str | None = None
    min_delta: float = 0.0

    @classmethod
    def from_params(cls, value: dict[str, Any] | None, has_val: bool) -> EarlyStopping | None:
        if value is None:
            return None
        unknown = set(value) - {"metric", "patience", "mode", "min_delta"}
        if unknown:
            raise ConfigError(
                f"early_stopping takes metric, patience, mode, min_delta; not {sorted(unknown)}"
            )
        patience = value.get("patience", 5)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"early_stopping patience must be an integer >= 1, not {patience!r}")
        metric = value.get("metric") or ("val_loss" if has_val else "train_loss")
        return cls(metric, patience, value.get("mode"), float(value.get("min_delta", 0.0)))

    def monitor(self) -> Monitor:
        return Monitor(self.metric, self.mode, self.min_delta)


@dataclass
class LRSchedule:
    """lr per epoch (see the module docstring); `monitor` is the plateau's metric."""

    lr: float
    epochs: int
    kind: str | None = None
    warmup_epochs: int = 0
    lr_min: float = 0.0
    step: int = 10
    gamma: float = 0.1
    patience: int = 2
    metric: str = "val_loss"
    mode: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {SCHEDULES[1:]}, not {self.kind!r}")
        self.plateau_factor = 1.0
        self._monitor = Monitor(self.metric, self.mode)

    def factor(self, epoch: int) -> float:
        """The warm-up and cosine/step factor of epoch `epoch` (0-based)."""
        w = self.warmup_epochs
        if epoch < w:
            return (epoch + 1) / (w + 1)
        after, span = epoch - w, self.epochs - w
        if self.kind == "cosine":
            if span <= 1 or self.lr <= 0:
                return 1.0
            floor = self.lr_min / self.lr
            return floor + (1 - floor) * (1 + math.cos(math.pi * after / (span - 1))) / 2
        if self.kind == "step":
            return self.gamma ** (after // self.step)
        return 1.0

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.factor(epoch) * self.plateau_factor

    def apply(self, optimizer: Any, epoch: int) -> float:
        """Set the optimizer's learning rate for `epoch`; returns it."""
        lr = self.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """After epoch `epoch` (0-based): a plateau schedule takes the epoch's metric."""
        if self.kind != "plateau" or epoch < self.warmup_epochs:
            return
        self._monitor.update(row)
        if self._monitor.bad > self.patience:
            self.plateau_factor *= self.gamma
            self._monitor.bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_factor": self.plateau_factor, "monitor": self._monitor.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.plateau_factor = float(state["plateau_factor"])
            self._monitor.load_state_dict(state["monitor"])
