"""PNG plots of a run, redrawn after every epoch, with the numbers they show as JSON.

- loss.png, accuracy.png, auc.png: train and validation per epoch;
- roc.png: signal efficiency against background efficiency; rejection.png: background rejection
  1/eps_B (log scale) against signal efficiency; roc.json: their curves (validation, and train);
- scores.png (binary) or scores_<class>.png (one per class, its score for it against the rest):
  the classifier-score distributions of each class, train and validation overlaid — the
  overtraining check — with the binned Kolmogorov-Smirnov p-value of train against validation
  in the legend; scores.json: the histograms and the tests.

Train scores are either those made while training the epoch (weights changing, dropout on: a
model with dropout then shows train/validation differences that are not overtraining) or, after
the last epoch of rootml.train.fit, those of the final model in eval mode; legends and JSON
say which ("train_scored"). Drawn with rootml.plotting (Agg, matplotlib imported only when
drawing, so importing rootml.train stays light).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rootml.plotting import Canvas, file_name
from rootml.train.metrics import BINS, EpochMetrics, ks_test

SCORE_BINS = 50  # drawn score bins; BINS / SCORE_BINS fine bins each
# ROC points kept: a new one where signal efficiency moves by 1e-3 or background efficiency by 1%.
ROC_RESOLUTION = (1e-3, 0.01)


CLASSIFIER_HISTORY = {
    "loss": ("Loss", "loss (weighted)"),
    "accuracy": ("Accuracy", "accuracy (weighted)"),
    "auc": ("ROC AUC", "ROC AUC"),
}


def plot_history(
    history: list[dict[str, Any]],
    folder: Path,
    context: str = "",
    metrics: dict[str, tuple[str, str]] | None = None,
) -> list[Path]:
    """<metric>.png: train and validation per epoch (integer epoch ticks), for each history
    metric of `metrics` (name -> (title, axis label); default loss, accuracy, AUC), and lr.png
    when the rows' learning rates ("lr") differ (a schedule)."""
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    labels = dict(metrics or CLASSIFIER_HISTORY)
    canvas, written = Canvas(), []
    for metric, (name, label) in labels.items():

        def draw(axes, metric=metric, label=label):
            for split in ("train", "val"):
                values = [row.get(f"{split}_{metric}", np.nan) for row in history]
                if not all(np.isnan(v) for v in values):
                    shown = "validation" if split == "val" else "train (during the epoch)"
                    axes.plot(epochs, values, marker="o", label=shown)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_xlabel("epoch")
            axes.set_ylabel(label)
            if axes.has_data():
                axes.legend()

        written.append(canvas.draw(folder / f"{metric}.png", draw, f"{name} per epoch", context))
    if len({row["lr"] for row in history if "lr" in row}) > 1:

        def draw_lr(axes):
            axes.plot(epochs, [row.get("lr", np.nan) for row in history], marker="o")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_xlabel("epoch")
            axes.set_ylabel("learning rate (at the epoch's start)")

        written.append(canvas.draw(folder / "lr.png", draw_lr, "Learning rate per epoch", context))
    return written


def class_names(n_classes: int, names: Sequence[str] | None = None) -> list[str]:
    """Display names: `names` when given, else background/signal for two classes, class N."""
    if names is not None and len(names) >= n_classes:
        return [str(n) for n in names]
    return ["background", "signal"] if n_classes == 2 else [f"class {k}" for k in range(n_classes)]


def roc_curves(metrics: EpochMetrics, names: Sequence[str]) -> list[dict[str, Any]]:
    """Per score class (binary: signal; else each class against the rest): its name, AUC and
    points of its ROC curve: score_cut (events with score >= it are selected),
    signal_efficiency, background_efficiency (the background rejection is 1 / it). The points
    are exact points of the curve, thinned (thin_roc) to a few thousand at most."""
    curves = []
    for k in metrics.score_classes:
        fpr, tpr, auc = metrics.roc(k)
        # Point i selects the top i fine bins; bin b holds scores within half a bin of b/(BINS-1).
        cuts = (BINS - np.arange(len(fpr)) - 0.5) / (BINS - 1)
        keep = thin_roc(fpr, tpr)
        curves.append(
            {
                "class": names[k],
                "auc": auc,
                "score_cut": cuts[keep].tolist(),
                "signal_efficiency": tpr[keep].tolist(),
                "background_efficiency": fpr[keep].tolist(),
            }
        )
    return curves


def thin_roc(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """Which ROC points to keep: the first of each run of points that agree within
    ROC_RESOLUTION in signal efficiency and in log background efficiency (rejection), and the
    last point. Every point dropped lies that close to the kept one before it, so the drawn
    curves do not change and the JSON stays small (20,000 bins would give 20,001 points)."""
    eff_s, log_b = ROC_RESOLUTION
    with np.errstate(divide="ignore"):
        key_b = np.floor(np.log(fpr) / np.log1p(log_b))
    key_b[fpr <= 0] = -1e300  # no background selected yet: one run
    key_s = np.floor(tpr / eff_s)
    keep = np.concatenate([[True], (np.diff(key_s) != 0) | (np.diff(key_b) != 0)])
    keep[-1] = True
    return keep


def score_distributions(
    train: EpochMetrics, val: EpochMetrics | None, names: Sequence[str]
) -> list[dict[str, Any]]:
    """Per score class: the drawn bin edges, the densities (unit area) of the class ("signal")
    and of the rest ("background") for train and validation, and per part the binned KS test
    of train against validation on the fine score bins (ks_test: D, p-value, effective
    entries)."""
    edges = (np.arange(0, BINS + 1, BINS // SCORE_BINS) - 0.5) / (BINS - 1)
    result = []
    for k in train.score_classes:
        entry: dict[str, Any] = {"class": names[k], "edges": edges.tolist(), "ks": {}}
        parts = {"train": train.one_vs_rest(k)}
        if val is not None:
            parts["val"] = val.one_vs_rest(k)
        for split, (pos, neg, _, _) in parts.items():
            entry[split] = {"signal": _density(pos, edges), "background": _density(neg, edges)}
        if val is not None:
            for i, part in enumerate(("signal", "background")):
                a, n_a = parts["train"][i], parts["train"][2 + i]
                b, n_b = parts["val"][i], parts["val"][2 + i]
                d, p = ks_test(a, b, n_a, n_b)
                entry["ks"][part] = {"D": d, "p_value": p, "n_train": n_a, "n_val": n_b}
        result.append(entry)
    return result


def _density(fine: np.ndarray, edges: np.ndarray) -> list[float]:
    coarse = fine.reshape(SCORE_BINS, -1).sum(1)
    total = coarse.sum()
    return (coarse / (total * np.diff(edges)) if total > 0 else coarse).tolist()


def plot_classifier(
    train: EpochMetrics,
    val: EpochMetrics | None,
    folder: Path,
    epoch: int,
    names: Sequence[str] | None = None,
    context: str = "",
    train_scored: str = "while training",
    sample: str = "train",
) -> list[Path]:
    """roc.png, rejection.png, roc.json and the score plots (scores.png for a binary model,
    scores_<class>.png per class otherwise) with scores.json, for `epoch`. train_scored: how
    the train scores were made ("while training" the epoch, or "final model"), in the legends
    and the JSON. sample: what `train` is named in the legends ("test": the test set alone,
    then `val` is None)."""
    names = class_names(train.n_classes, names)
    shown = {"validation": roc_curves(val, names)} if val is not None else {}
    shown[f"train ({train_scored})" if sample == "train" else sample] = roc_curves(train, names)
    folder.mkdir(parents=True, exist_ok=True)
    about = {"epoch": epoch, "train_scored": train_scored}
    (folder / "roc.json").write_text(json.dumps({**about, **shown}))
    canvas = Canvas()
    written = [
        canvas.draw(folder / "roc.png", _roc_drawer(shown, False), f"ROC, epoch {epoch}", context),
        canvas.draw(
            folder / "rejection.png",
            _roc_drawer(shown, True),
            f"Background rejection, epoch {epoch}",
            context,
        ),
    ]
    scores = score_distributions(train, val, names)
    (folder / "scores.json").write_text(json.dumps({**about, "classes": scores}))
    binary = train.n_classes == 2
    for entry in scores:
        what = "Classifier score" if binary else f"Score of {entry['class']} vs rest"
        title = f"{what}, {sample}{' vs validation' if val is not None else ''}, epoch {epoch}"
        name = "scores.png" if binary else file_name(f"scores_{entry['class']}") + ".png"
        drawer = _score_drawer(entry, binary, train_scored if sample == "train" else None, sample)
        written.append(canvas.draw(folder / name, drawer, title, context))
    return written


def _roc_drawer(shown: dict[str, list[dict[str, Any]]], rejection: bool):
    def draw(axes):
        for split, curves in shown.items():
            for i, curve in enumerate(curves):
                eff_s = np.asarray(curve["signal_efficiency"])
                eff_b = np.asarray(curve["background_efficiency"])
                label = f"{split}, AUC = {curve['auc']:.4f}"
                if len(curves) > 1:
                    label = f"{curve['class']} vs rest, {label}"
                style = dict(
                    color=f"C{i % 10}", ls="--" if split.startswith("train") else "-", lw=1.5
                )
                if rejection:
                    keep = eff_b > 0
                    axes.plot(eff_s[keep], 1 / eff_b[keep], label=label, **style)
                else:
                    axes.plot(eff_b, eff_s, label=label, **style)
        if rejection:
            axes.set_yscale("log")
            axes.set_xlabel("signal efficiency $\\varepsilon_S$ (true positive rate)")
            axes.set_ylabel("background rejection $1/\\varepsilon_B$")
            axes.legend(loc="lower left")
        else:
            axes.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8, label="random")
            axes.set_xlabel("background efficiency $\\varepsilon_B$ (false positive rate)")
            axes.set_ylabel("signal efficiency $\\varepsilon_S$ (true positive rate)")
            axes.legend(loc="lower right")
        axes.set_xlim(0, 1)

    return draw


def _score_drawer(entry: dict[str, Any], binary: bool, train_scored: str | None, sample="train"):
    signal = entry["class"] if not binary else "signal"
    parts = {"signal": signal, "background": "background" if binary else f"not {signal}"}

    def draw(axes):
        edges = np.asarray(entry["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        for colour, (part, label) in zip(("tab:blue", "tab:red"), parts.items()):
            if "val" in entry:
                axes.stairs(entry["val"][part], edges, fill=True, alpha=0.3, color=colour,
                            label=f"{label}, validation")  # fmt: skip
            ks = entry["ks"].get(part)
            suffix = f" (KS p = {ks['p_value']:.3g})" if ks else ""
            shown = f"train ({train_scored})" if train_scored else sample
            axes.plot(centres, entry["train"][part], "o", ms=3.5, color=colour,
                      label=f"{label}, {shown}{suffix}")  # fmt: skip
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.7 * axes.get_ylim()[1])  # room for the legend above the peaks
        score = "signal" if binary else entry["class"]
        axes.set_xlabel(f"classifier score ({score} probability)")
        axes.set_ylabel("density (unit area)")
        axes.legend(loc="upper center", title="KS: binned, train vs validation", title_fontsize=9)

    return draw
