"""What a model is trained to do: the loss of a batch, the metrics of an epoch, the epoch table's
columns and the plots. Classification (labels; the default) or Regression (float targets)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rootml.errors import ConfigError, ModelError
from rootml.train.metrics import EpochMetrics
from rootml.train.plots import class_names as display_names
from rootml.train.plots import plot_classifier, plot_history
from rootml.train.regression import RegressionMetrics, plot_regression

LOSSES = ("mse", "huber", "gaussian_nll")


class Classification:
    """A (B, 1) output is a probability (binary cross-entropy), a (B, C) output with C >= 2 are
    logits (softmax cross-entropy); class_weights: a factor per class on each event's weight."""

    kind = "classification"
    columns = ("loss", "accuracy", "auc")

    def __init__(self, class_weights: Sequence[float] | None = None, names=None):
        self.class_weights = list(class_weights) if class_weights else None
        self.names = names
        self._weights: torch.Tensor | None = None

    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor], weight: torch.Tensor):
        """(per-event loss (B,), event weights, what the metrics need)."""
        labels = batch["label"]
        per_event, probs = _classification_loss(output, labels)
        if self.class_weights is not None:
            if self._weights is None or self._weights.device != weight.device:
                self._weights = torch.tensor(self.class_weights, device=weight.device)
            weight = weight * self._weights[labels]
        return per_event, weight, (probs, labels)

    def new_metrics(self, output: torch.Tensor, device: torch.device) -> EpochMetrics:
        classes = output.shape[1] if output.ndim == 2 and output.shape[1] > 1 else 2
        if self.class_weights is not None and len(self.class_weights) != classes:
            raise ModelError(
                f"{len(self.class_weights)} class weights for a model of {classes} classes"
            )
        return EpochMetrics(classes, device)

    def empty_metrics(self, device: torch.device) -> EpochMetrics:
        return EpochMetrics(2, device)

    def metrics_from_state(self, state: dict[str, Any], device: torch.device) -> EpochMetrics:
        return EpochMetrics.from_state_dict(state, device)

    def update(self, metrics: EpochMetrics, weighted: torch.Tensor, info, weight) -> None:
        probs, labels = info
        metrics.update(weighted, probs, labels, weight)

    def plot(self, folder: Path, history, train, val, context: str, note: str, last=True) -> None:
        """The history plots and the ROC and score plots of this epoch."""
        names = display_names(train.n_classes, self.names)
        plot_history(history, folder, context)
        plot_classifier(train, val, folder, history[-1]["epoch"], names, context, note)

    def plot_test(self, folder: Path, metrics, epoch: int, context: str) -> None:
        names = display_names(metrics.n_classes, self.names)
        plot_classifier(metrics, None, folder, epoch, names, context, sample="test")


class Regression:
    """Float targets batch["target"] (B, T). The loss compares the model's output with the
    targets standardised by `mean` and `std` (the training entries'; 0 and 1 when
    `standardize` is False): "mse", "huber" (quadratic within `huber_delta` standardised units)
    or "gaussian_nll" (outputs (B, 2T): T means, then T log variances). Predictions in the
    targets' units are output * std + mean (the first T columns); metrics and plots use those.
    low, high: the targets' training range (the bins of the per-bin response)."""

    kind = "regression"

    def __init__(self, names, mean, std, low, high, loss="mse", huber_delta=1.0,
                 standardize=True):  # fmt: skip
        if loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, not {loss!r}")
        self.names, self.loss_name, self.huber_delta = list(names), loss, float(huber_delta)
        self.stats = [list(map(float, v)) for v in (mean, std, low, high)]
        self.scale_mean = self.stats[0] if standardize else [0.0] * len(self.names)
        self.scale_std = [s if s > 0 else 1.0 for s in self.stats[1]] if standardize else [1.0] * len(self.names)  # fmt: skip
        self._scale: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """History keys of the epoch table (the first target's when there are several)."""
        suffix = "" if len(self.names) == 1 else f"_{self.names[0]}"
        return ("loss", f"resolution{suffix}", f"bias{suffix}")

    @property
    def outputs(self) -> int:
        """Output columns the model must give."""
        return len(self.names) * (2 if self.loss_name == "gaussian_nll" else 1)

    def output_affine(self) -> tuple[list[float], list[float]]:
        """(scale, offset) per output column taking the model's output to the targets' units:
        means x std + mean; log variances + 2 log std."""
        t = len(self.names)
        scale, offset = list(self.scale_std), list(self.scale_mean)
        if self.loss_name == "gaussian_nll":
            scale += [1.0] * t
            offset += [2 * float(np.log(s)) for s in self.scale_std]
        return scale, offset

    def checkpoint_record(self) -> dict[str, Any]:
        """What export needs to give outputs in the targets' units (checkpoint "regression")."""
        scale, offset = self.output_affine()
        return {"targets": self.names, "loss": self.loss_name, "scale": scale, "offset": offset,
                "mean": self.stats[0], "std": self.stats[1]}  # fmt: skip

    def loss(self, output: torch.Tensor, batch: dict[str, torch.Tensor], weight: torch.Tensor):
        target = batch["target"].float()
        t = target.shape[1]
        output = output.reshape(len(output), -1)
        if output.shape[1] != self.outputs:
            raise ModelError(
                f"the model returns {output.shape[1]} values per entry; {self.loss_name} of "
                f"{t} target(s) needs {self.outputs}"
            )
        if self._scale is None or self._scale[0].device != output.device:
            self._scale = (torch.tensor(self.scale_mean, device=output.device),
                           torch.tensor(self.scale_std, device=output.device))  # fmt: skip
        mean, std = self._scale
        scaled, mu = (target - mean) / std, output[:, :t]
        if self.loss_name == "mse":
            per_event = F.mse_loss(mu, scaled, reduction="none").sum(1)
        elif self.loss_name == "huber":
            per_event = F.huber_loss(mu, scaled, reduction="none", delta=self.huber_delta).sum(1)
        else:
            var = output[:, t:].clamp(-30, 30).exp()
            per_event = F.gaussian_nll_loss(mu, scaled, var, reduction="none").sum(1)
        return per_event, weight, (mu * std + mean, target)

    def new_metrics(self, output: torch.Tensor, device: torch.device) -> RegressionMetrics:
        return RegressionMetrics(self.names, *self.stats, device=device)

    def empty_metrics(self, device: torch.device) -> RegressionMetrics:
        return RegressionMetrics(self.names, *self.stats, device=device)

    def metrics_from_state(self, state: dict[str, Any], device: torch.device):
        return RegressionMetrics(self.names, *self.stats, device=device).load_state_dict(state)

    def update(self, metrics: RegressionMetrics, weighted: torch.Tensor, info, weight) -> None:
        predicted, target = info
        metrics.update(weighted, predicted, target, weight)

    def plot(self, folder: Path, history, train, val, context: str, note: str, last=True) -> None:
        """The history plots (loss, resolution, bias) every epoch; the regression plots of the
        final model (`last`: they take a while, and show the model that is kept)."""
        _, resolution, bias = self.columns
        metrics = {"loss": ("Loss", "loss (weighted)"),
                   resolution: ("Resolution", f"resolution of {self.names[0]}"),
                   bias: ("Bias", f"bias of {self.names[0]}")}  # fmt: skip
        plot_history(history, folder, context, metrics)
        if not last:
            return
        samples = {f"train ({note})": train, **({"validation": val} if val is not None else {})}
        plot_regression(samples, folder, history[-1]["epoch"], context)

    def plot_test(self, folder: Path, metrics, epoch: int, context: str) -> None:
        plot_regression({"test": metrics}, folder, epoch, context)


def _classification_loss(output: torch.Tensor, labels: torch.Tensor):
    """Per-event loss (B,) and the probabilities the metrics use: (B,) for one output column
    (a probability: binary cross-entropy), (B, C) softmax for C columns (cross-entropy)."""
    if output.ndim == 1 or output.shape[1] == 1:
        probs = output.reshape(-1).clamp(1e-7, 1 - 1e-7)
        return F.binary_cross_entropy(probs, labels.float(), reduction="none"), probs
    return F.cross_entropy(output, labels, reduction="none"), output.softmax(1)
