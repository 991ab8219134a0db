"""Epoch metrics — weighted loss, accuracy and ROC AUC — in memory bounded by a fixed number of
score bins, never by the number of events, and summable over DDP ranks.

The AUC is the rank (Mann-Whitney) AUC computed from per-class histograms of the score instead of
from every score: ranks within one bin of 1/20000 count as ties, which moves the AUC by less than
2e-4 against sklearn's exact one (tests/train), while the state stays a few hundred kB whatever
the number of events and DDP ranks combine it with one all_reduce instead of gathering scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BINS = 20_000  # score bins per class: the AUC is exact up to ties inside a bin (< 1e-4)


def roc_from_histograms(
    positive: np.ndarray, negative: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """(fpr, tpr, auc) from weighted score histograms of the positive and negative class (same
    bins, ascending score). Ties inside a bin count half, as in the rank definition of AUC."""
    pos, neg = positive[::-1].astype(np.float64), negative[::-1].astype(np.float64)
    tp, fp = np.concatenate([[0], np.cumsum(pos)]), np.concatenate([[0], np.cumsum(neg)])
    if tp[-1] <= 0 or fp[-1] <= 0:
        return fp, tp, float("nan")
    tpr, fpr = tp / tp[-1], fp / fp[-1]
    auc = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
    return fpr, tpr, auc


class EpochMetrics:
    """Accumulates one epoch: weighted loss sum, weight sum, weighted correct sum, events, and
    per-class histograms of the signal score (binary: the output; multi-class: one-vs-rest)."""

    def __init__(self, n_classes: int, device: torch.device | str = "cpu"):
        self.n_classes = max(int(n_classes), 2)
        # loss, weight, correct, events
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)
        self.hist = torch.zeros(
            self.n_classes, self.n_classes, BINS, dtype=torch.float64, device=device
        )

    @torch.no_grad()
    def update(
        self,
        loss_sum: torch.Tensor,
        probs: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
    ) -> None:
        """loss_sum: the weighted loss summed over the batch (0-dim); probs: (B,) signal
        probability (one output) or (B, C) class probabilities (softmax); labels int64 (B,);
        weights (B,)."""
        weights = weights.double()
        predicted = (probs > 0.5).long() if probs.ndim == 1 else probs.argmax(1)
        if probs.ndim == 2 and probs.shape[1] == 2:
            probs = probs[:, 1]  # two softmax outputs: the binary ROC of class 1's probability
        self.sums += torch.stack(
            [
                loss_sum.detach().double(),
                weights.sum(),
                (weights * (predicted == labels)).sum(),
                torch.tensor(len(labels), device=weights.device, dtype=torch.float64),
            ]
        )
        scores = probs.unsqueeze(1) if probs.ndim == 1 else probs  # (B, 1) or (B, C)
        bins = (scores.detach().float().clamp(0, 1) * (BINS - 1)).round().long()
        for k in range(scores.shape[1]):  # a handful of classes, not events
            index = labels * BINS + bins[:, k]
            self.hist[k].view(-1).index_add_(0, index, weights)

    def state_dict(self) -> dict[str, Any]:
        """The sums so far (a checkpoint inside an epoch keeps them)."""
        return {"n_classes": self.n_classes, "sums": self.sums.cpu(), "hist": self.hist.cpu()}

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: torch.device | str = "cpu"
    ) -> EpochMetrics:
        metrics = cls(state["n_classes"], device)
        metrics.sums.copy_(state["sums"])
        metrics.hist.copy_(state["hist"])
        return metrics

    def all_reduce(self) -> None:
        """Sum over DDP ranks (no-op without torch.distributed)."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)
            dist.all_reduce(self.hist)

    def result(self, prefix: str) -> dict[str, float]:
        loss, weight, correct, events = self.sums.tolist()
        aucs = []
        for k in range(1 if self.n_classes == 2 else self.n_classes):
            target = 1 if self.n_classes == 2 else k
            hist = self.hist[0 if self.n_classes == 2 else k].cpu().numpy()
            positive = hist[target]
            negative = hist.sum(0) - positive
            aucs.append(roc_from_histograms(positive, negative)[2])
        return {
            f"{prefix}_loss": loss / weight if weight else float("nan"),
            f"{prefix}_accuracy": correct / weight if weight else float("nan"),
            f"{prefix}_auc": float(np.nanmean(aucs)) if not all(np.isnan(aucs)) else float("nan"),
            f"{prefix}_events": int(events),
        }

    def roc(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The binary ROC curve (fpr, tpr, auc) of this epoch."""
        hist = self.hist[0].cpu().numpy()
        return roc_from_histograms(hist[1], hist.sum(0) - hist[1])
