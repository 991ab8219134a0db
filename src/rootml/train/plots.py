"""PNG plots of a run: loss, accuracy and AUC per epoch, and the ROC curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def plot_history(history: list[dict[str, Any]], folder: Path) -> list[Path]:
    """loss.png, accuracy.png, auc.png: train and validation per epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    epochs = [row["epoch"] for row in history]
    written = []
    for metric in ("loss", "accuracy", "auc"):
        figure, axes = _figure()
        for split in ("train", "val"):
            values = [row.get(f"{split}_{metric}", np.nan) for row in history]
            if not all(np.isnan(values)):
                axes.plot(
                    epochs, values, marker="o", label="validation" if split == "val" else split
                )
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = folder / f"{metric}.png"
        figure.savefig(path)
        written.append(path)
    return written


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, path: Path) -> Path:
    """The ROC curve (signal efficiency against background efficiency) with its AUC."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = _figure()
    axes.plot(fpr, tpr, label=f"AUC = {auc:.4f}")
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    axes.set_xlabel("background efficiency (false positive rate)")
    axes.set_ylabel("signal efficiency (true positive rate)")
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return path
