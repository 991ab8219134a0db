"""Regression metrics — loss, bias and resolution of each target, response and resolution per bin
of the true value, predicted-vs-true maps — in memory bounded by fixed bins, summable over DDP
ranks as the classifier's EpochMetrics are; and their plots.

Residual r = predicted - true, in the target's own units. Per target and sample: bias (weighted
mean of r), resolution (weighted standard deviation of r), bias_median and resolution_iqr
(interquartile range / 1.349, the standard deviation for a Gaussian, robust to tails) from a
histogram of r in RES_BINS bins over +-RES_RANGE standard deviations of the target (quantiles
exact to a bin, 5e-4 of the target's spread). Response per bin of the true value:
sum(w predicted) / sum(w true) over the entries of the bin, in TRUE_BINS bins over the training
range of the target (values beyond it in the edge bins).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rootml.plotting import Canvas, file_name

RES_BINS = 20_000
RES_RANGE = 5.0  # residual histogram: +-5 target standard deviations
TRUE_BINS = 20
MAP_BINS = 50
_IQR_SIGMA = 1.3489795003921634  # interquartile range of a unit Gaussian


class RegressionMetrics:
    """Accumulates one epoch of a regression with targets `names`: their training `mean`, `std`,
    `low` and `high` (min/max) fix the bins."""

    _STATE = ("sums", "moments", "residual", "per_bin", "map")

    def __init__(self, names, mean, std, low, high, device: torch.device | str = "cpu"):
        self.names = list(names)
        t = len(self.names)
        as64 = dict(dtype=torch.float64, device=device)
        self.mean, self.std = torch.tensor(mean, **as64), torch.tensor(std, **as64).clamp_min(1e-12)
        self.low = torch.tensor(low, **as64)
        self.high = torch.maximum(torch.tensor(high, **as64), self.low + 1e-9)
        self.sums = torch.zeros(3, **as64)  # loss, weight, events
        self.moments = torch.zeros(t, 2, **as64)  # sum w r, sum w r^2
        self.residual = torch.zeros(t, RES_BINS, **as64)
        self.per_bin = torch.zeros(t, TRUE_BINS, 5, **as64)  # w, w true, w pred, w r, w r^2
        self.map = torch.zeros(t, MAP_BINS, MAP_BINS, **as64)  # true bin x predicted bin

    @torch.no_grad()
    def update(self, loss_sum, predicted, target, weights) -> None:
        """loss_sum: the weighted loss summed over the batch; predicted, target (B, T) in the
        targets' units; weights (B,)."""
        w = weights.double()
        pred, true = predicted.detach().double(), target.double()
        r = pred - true
        self.sums += torch.stack([loss_sum.detach().double(), w.sum(), w.new_tensor(len(w))])
        self.moments += torch.stack([(w[:, None] * r).sum(0), (w[:, None] * r * r).sum(0)], 1)
        span = self.high - self.low
        res_bin = _bin((r / self.std + RES_RANGE) / (2 * RES_RANGE), RES_BINS)
        true_bin = _bin((true - self.low) / span, TRUE_BINS)
        pred_bin = _bin((pred - self.low) / span, MAP_BINS)
        map_true = _bin((true - self.low) / span, MAP_BINS)
        parts = torch.stack([torch.ones_like(r), true, pred, r, r * r], 2) * w[:, None, None]
        for j in range(len(self.names)):  # a handful of targets, not events
            self.residual[j].index_add_(0, res_bin[:, j], w)
            self.per_bin[j].index_add_(0, true_bin[:, j], parts[:, j])
            self.map[j].view(-1).index_add_(0, map_true[:, j] * MAP_BINS + pred_bin[:, j], w)

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).cpu() for name in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> RegressionMetrics:
        for name in self._STATE:
            getattr(self, name).copy_(state[name])
        return self

    def all_reduce(self) -> None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            for name in self._STATE:
                dist.all_reduce(getattr(self, name))

    def suffix(self, j: int) -> str:
        return "" if len(self.names) == 1 else f"_{self.names[j]}"

    def result(self, prefix: str) -> dict[str, float]:
        loss, weight, events = self.sums.tolist()
        row = {f"{prefix}_loss": loss / weight if weight else float("nan"),
               f"{prefix}_events": int(events)}  # fmt: skip
        for j in range(len(self.names)):
            for key, value in self.target_stats(j).items():
                row[f"{prefix}_{key}{self.suffix(j)}"] = value
        return row

    def target_stats(self, j: int) -> dict[str, float]:
        """bias, resolution, bias_median, resolution_iqr of target j (NaN without entries)."""
        weight = float(self.per_bin[j, :, 0].sum())
        if weight <= 0:
            return dict.fromkeys(("bias", "resolution", "bias_median", "resolution_iqr"), np.nan)
        first, second = (self.moments[j] / weight).tolist()
        q1, median, q3 = self.residual_quantiles(j, (0.25, 0.5, 0.75))
        return {
            "bias": first,
            "resolution": float(np.sqrt(max(second - first * first, 0.0))),
            "bias_median": median,
            "resolution_iqr": (q3 - q1) / _IQR_SIGMA,
        }

    def residual_edges(self, j: int) -> np.ndarray:
        std = float(self.std[j])
        return np.linspace(-RES_RANGE * std, RES_RANGE * std, RES_BINS + 1)

    def residual_quantiles(self, j: int, qs: Sequence[float]) -> list[float]:
        """Weighted quantiles of the residual, linear inside a bin."""
        hist = self.residual[j].cpu().numpy()
        cdf = np.concatenate([[0.0], np.cumsum(hist)])
        cdf /= cdf[-1]
        return [float(np.interp(q, cdf, self.residual_edges(j))) for q in qs]

    def per_bin_table(self, j: int) -> dict[str, list[float]]:
        """Per bin of the true value: centres, entries (sum of weights), response, bias and
        resolution (NaN in empty bins)."""
        w, wt, wp, wr, wr2 = self.per_bin[j].cpu().numpy().T
        edges = np.linspace(float(self.low[j]), float(self.high[j]), TRUE_BINS + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            bias = np.where(w > 0, wr / w, np.nan)
            resolution = np.sqrt(np.maximum(np.where(w > 0, wr2 / w, np.nan) - bias**2, 0))
            response = np.where((w > 0) & (wt != 0), wp / wt, np.nan)
        return {
            "edges": edges.tolist(),
            "weight": w.tolist(),
            "response": response.tolist(),
            "bias": bias.tolist(),
            "resolution": resolution.tolist(),
        }


def _bin(fraction: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin index of values given as a fraction of the range; beyond it (and NaN) the edge bins."""
    index = torch.nan_to_num(fraction * bins, nan=bins - 1.0, posinf=bins - 1.0, neginf=0.0)
    return index.floor().clamp(0, bins - 1).long()


def plot_regression(
    samples: dict[str, RegressionMetrics], folder: Path, epoch: int, context: str = ""
) -> list[Path]:
    """Per target: predicted_vs_true_<t>.png (2D histogram, last sample of `samples`, e.g.
    validation), residuals_<t>.png (residual distributions of every sample, unit area, with
    bias and resolution), response_<t>.png (response per bin of the true value; the bias per
    bin instead for a target whose range reaches 0 or below, where a ratio means nothing),
    resolution_<t>.png (resolution per bin), and regression.json with the numbers drawn."""
    folder.mkdir(parents=True, exist_ok=True)
    first = next(iter(samples.values()))
    canvas, written, numbers = Canvas(), [], {"epoch": epoch, "targets": {}}
    for j, name in enumerate(first.names):
        numbers["targets"][name] = {
            split: {**m.target_stats(j), "per_bin": m.per_bin_table(j)} for split, m in samples.items()
        }  # fmt: skip
        stem = file_name(name)
        shown, metrics = list(samples.items())[-1]
        written += [
            canvas.draw(folder / f"predicted_vs_true_{stem}.png", _map_drawer(metrics, j, name),
                        f"Predicted vs true {name}, {shown}, epoch {epoch}", context),
            canvas.draw(folder / f"residuals_{stem}.png", _residual_drawer(samples, j, name),
                        f"Residuals of {name}, epoch {epoch}", context),
            canvas.draw(folder / f"response_{stem}.png", _per_bin_drawer(samples, j, name, "response"),
                        f"Response per bin of true {name}, epoch {epoch}", context),
            canvas.draw(folder / f"resolution_{stem}.png", _per_bin_drawer(samples, j, name, "resolution"),
                        f"Resolution per bin of true {name}, epoch {epoch}", context),
        ]  # fmt: skip
    (folder / "regression.json").write_text(json.dumps(numbers, default=_nan_null))
    return written


def _nan_null(value: Any) -> Any:
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _map_drawer(metrics: RegressionMetrics, j: int, name: str):
    def draw(axes):
        low, high = float(metrics.low[j]), float(metrics.high[j])
        counts = metrics.map[j].cpu().numpy().T  # rows: predicted bins
        edges = np.linspace(low, high, MAP_BINS + 1)
        shown = np.where(counts > 0, counts, np.nan)
        mesh = axes.pcolormesh(edges, edges, shown, cmap="viridis")
        axes.figure.colorbar(mesh, ax=axes, label="entries (weighted)")
        axes.plot([low, high], [low, high], ls="--", color="red", lw=1, label="predicted = true")
        axes.set_xlabel(f"true {name}")
        axes.set_ylabel(f"predicted {name}")
        axes.legend(loc="upper left")

    return draw


def _residual_drawer(samples: dict[str, RegressionMetrics], j: int, name: str):
    def draw(axes):
        for split, metrics in samples.items():
            hist = metrics.residual[j].cpu().numpy()
            if hist.sum() <= 0:
                continue
            edges = metrics.residual_edges(j)
            low, high = metrics.residual_quantiles(j, (0.001, 0.999))
            width = max(high - low, edges[1] - edges[0])
            group = max(int(width / (edges[1] - edges[0]) / 100), 1)  # about 100 drawn bins
            coarse = np.add.reduceat(hist, np.arange(0, RES_BINS, group))
            coarse_edges = np.append(edges[:-1:group], edges[-1])
            density = coarse / (coarse.sum() * np.diff(coarse_edges))
            stats = metrics.target_stats(j)
            axes.stairs(density, coarse_edges, lw=1.5, label=f"{split}: bias {stats['bias']:.3g},"
                        f" resolution {stats['resolution']:.3g} (IQR {stats['resolution_iqr']:.3g})")  # fmt: skip
            axes.set_xlim(low - 0.2 * width, high + 0.2 * width)
        axes.set_xlabel(f"predicted - true {name}")
        axes.set_ylabel("density (unit area)")
        if axes.has_data():
            axes.legend(loc="upper right", fontsize=8)

    return draw


def _per_bin_drawer(samples: dict[str, RegressionMetrics], j: int, name: str, what: str):
    first = next(iter(samples.values()))
    if what == "response" and float(first.low[j]) <= 0:
        what = "bias"  # a ratio to values around 0 means nothing
    labels = {"response": "response: sum(predicted) / sum(true)",
              "bias": f"bias: mean(predicted - true {name})",
              "resolution": f"resolution: std(predicted - true {name})"}  # fmt: skip

    def draw(axes):
        for split, metrics in samples.items():
            table = metrics.per_bin_table(j)
            edges = np.asarray(table["edges"])
            centres = (edges[:-1] + edges[1:]) / 2
            axes.plot(centres, table[what], marker="o", label=split)
        if what != "resolution":
            axes.axhline(1.0 if what == "response" else 0.0, ls=":", color="grey", lw=0.8)
        axes.set_xlabel(f"true {name}")
        axes.set_ylabel(labels[what])
        if axes.has_data():
            axes.legend()

    return draw
