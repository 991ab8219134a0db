"""The numbers the run plots draw, against independent computations: ROC and background
rejection against sklearn.metrics.roc_curve, the binned KS test against numpy ECDFs and
scipy's Kolmogorov distribution, score densities against numpy.histogram; binary and
multi-class (one-vs-rest) models, unit and non-unit weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import kstwobign
from sklearn.metrics import roc_curve

from rootml.train import EpochMetrics
from rootml.train.metrics import BINS, kolmogorov_sf
from rootml.train.plots import (
    ROC_RESOLUTION,
    plot_classifier,
    plot_history,
    roc_curves,
    score_distributions,
)


def fill(probs, labels, weights, n_classes=2):
    metrics = EpochMetrics(n_classes)
    for part in np.array_split(np.arange(len(labels)), 3):
        metrics.update(
            torch.tensor(0.0),
            torch.tensor(probs[part]),
            torch.tensor(labels[part]),
            torch.tensor(weights[part]),
        )
    return metrics


def quantised(scores):
    """The centre of the score bin the metrics count each score in: the bin index as they
    compute it (float32), the centre in float64."""
    index = np.round(np.clip(scores.astype(np.float32), 0, 1) * np.float32(BINS - 1))
    return index.astype(np.float64) / (BINS - 1)


def binary_sample(rng, n, shift=0.0):
    labels = rng.integers(0, 2, n)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels + shift, 0.18), 0, 1).astype(np.float32)
    return scores, labels


def assert_points_of(curve, labels, scores, weights=None):
    """Every point kept is a point of sklearn's ROC on the same (bin-quantised) scores, at the
    same cut; every sklearn point dropped is within ROC_RESOLUTION of the kept one before it.
    Returns sklearn's (fpr, tpr) of the kept points."""
    fpr, tpr, thresholds = roc_curve(
        labels, quantised(scores), sample_weight=weights, drop_intermediate=False
    )
    # sklearn's thresholds are the bin centres b/(BINS-1) of the scores (descending, the first
    # one inf); a kept point cuts half a bin below the centre of its lowest bin.
    # The first point selects nothing (sklearn: threshold inf), the last one everything (its
    # cut, below bin 0, may be under the lowest score).
    bins_sklearn = np.round(thresholds[1:] * (BINS - 1)).astype(np.int64)
    bins_kept = np.round(np.asarray(curve["score_cut"][1:-1]) * (BINS - 1) + 0.5).astype(np.int64)
    index = np.searchsorted(-bins_sklearn, -bins_kept) + 1
    np.testing.assert_array_equal(bins_sklearn[index - 1], bins_kept)
    assert curve["score_cut"][-1] <= thresholds[-1] and curve["score_cut"][0] > 1
    index = np.concatenate([[0], index, [len(fpr) - 1]])
    np.testing.assert_allclose(curve["signal_efficiency"], tpr[index], rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve["background_efficiency"], fpr[index], rtol=0, atol=1e-12)
    before = np.searchsorted(index, np.arange(len(fpr)), side="right") - 1
    eff_s, log_b = ROC_RESOLUTION
    assert np.all(np.abs(tpr - tpr[index][before]) < eff_s)
    both = fpr[index][before] > 0
    assert np.all(np.abs(np.log(fpr[both] / fpr[index][before][both])) < np.log1p(log_b))
    return fpr[index], tpr[index]


@pytest.mark.parametrize("weighted", [False, True])
def test_rejection_is_one_over_sklearn_fpr_on_the_same_scores(weighted):
    rng = np.random.default_rng(11)
    scores, labels = binary_sample(rng, 30_000)
    weights = rng.uniform(0.2, 2.0, 30_000) if weighted else None
    metrics = fill(scores, labels, np.ones(30_000) if weights is None else weights)
    (curve,) = roc_curves(metrics, ["background", "signal"])
    fpr, tpr = assert_points_of(curve, labels, scores, weights)
    assert 500 < len(fpr) < 3000  # thinned from up to 20,001 points, still fine-grained
    eff_b = np.asarray(curve["background_efficiency"])
    # rejection.png draws 1/eps_B against eps_S where eps_B > 0
    np.testing.assert_allclose(1 / eff_b[eff_b > 0], 1 / fpr[fpr > 0], rtol=1e-12)
    full_fpr, full_tpr, _ = roc_curve(labels, quantised(scores), sample_weight=weights)
    assert curve["class"] == "signal"
    assert curve["auc"] == pytest.approx(np.trapezoid(full_tpr, full_fpr), abs=1e-12)


def test_multiclass_curves_are_each_class_against_the_rest():
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 3, 20_000)
    probs = torch.tensor(rng.normal(np.eye(3)[labels] * 1.5, 1.0)).softmax(1).numpy()
    curves = roc_curves(fill(probs, labels, np.ones(20_000), 3), ["ttH", "ttbar", "ttZ"])
    assert [c["class"] for c in curves] == ["ttH", "ttbar", "ttZ"]
    for k, curve in enumerate(curves):
        assert_points_of(curve, labels == k, probs[:, k])


def ecdf_distance(a, b, wa, wb):
    """The two-sample KS statistic of weighted samples: largest ECDF difference, numpy only."""
    grid = np.union1d(a, b)
    cdf_a = np.array([wa[a <= x].sum() for x in grid]) / wa.sum()
    cdf_b = np.array([wb[b <= x].sum() for x in grid]) / wb.sum()
    return np.abs(cdf_a - cdf_b).max()


@pytest.mark.parametrize("weighted", [False, True])
def test_ks_p_values_equal_numpy_ecdfs_and_the_kolmogorov_distribution(weighted):
    """Train and validation samples differing a little: D is the ECDF distance of the
    bin-quantised samples, p the Kolmogorov distribution at D sqrt(n n' / (n + n')), n the
    effective entries (sum w)^2 / sum w^2 (all computed here from the samples)."""
    rng = np.random.default_rng(13)
    train_s, train_l = binary_sample(rng, 4000)
    val_s, val_l = binary_sample(rng, 1500, shift=0.02)
    train_w = rng.uniform(0.5, 1.5, 4000) if weighted else np.ones(4000)
    val_w = rng.uniform(0.5, 1.5, 1500) if weighted else np.ones(1500)
    (entry,) = score_distributions(
        fill(train_s, train_l, train_w), fill(val_s, val_l, val_w), ["background", "signal"]
    )
    for part, label in (("signal", 1), ("background", 0)):
        a, b = train_l == label, val_l == label
        d = ecdf_distance(quantised(train_s[a]), quantised(val_s[b]), train_w[a], val_w[b])
        n_a = train_w[a].sum() ** 2 / (train_w[a] ** 2).sum()
        n_b = val_w[b].sum() ** 2 / (val_w[b] ** 2).sum()
        ks = entry["ks"][part]
        assert ks["D"] == pytest.approx(d, abs=1e-12)
        assert ks["n_train"] == pytest.approx(n_a) and ks["n_val"] == pytest.approx(n_b)
        assert ks["p_value"] == pytest.approx(kstwobign.sf(d * np.sqrt(n_a * n_b / (n_a + n_b))))


def test_kolmogorov_series_equal_scipy():
    for z in np.concatenate([np.linspace(0.2, 3.5, 67), [0.999, 1.0, 1.001]]):
        assert kolmogorov_sf(z) == pytest.approx(kstwobign.sf(z), rel=1e-9, abs=1e-300)
    assert kolmogorov_sf(0.0) == 1.0 and kolmogorov_sf(0.05) == pytest.approx(1.0)


def test_drawn_densities_equal_numpy_histograms(tmp_path):
    rng = np.random.default_rng(14)
    train_s, train_l = binary_sample(rng, 5000)
    val_s, val_l = binary_sample(rng, 2000)
    weights = rng.uniform(0.5, 2.0, 2000)
    written = plot_classifier(
        fill(train_s, train_l, np.ones(5000)),
        fill(val_s, val_l, weights),
        tmp_path,
        epoch=4,
        context="run 'test'",
        train_scored="final model",
    )
    assert sorted(p.name for p in written) == ["rejection.png", "roc.png", "scores.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["epoch"] == 4 and saved["train_scored"] == "final model"
    (entry,) = saved["classes"]
    edges = np.asarray(entry["edges"])
    assert len(edges) == 51 and edges[0] < 0 < edges[1] and edges[-2] < 1 < edges[-1]
    for part, label in (("signal", 1), ("background", 0)):
        want, _ = np.histogram(
            quantised(val_s[val_l == label]), edges, weights=weights[val_l == label], density=True
        )
        np.testing.assert_allclose(entry["val"][part], want, rtol=1e-9)
        want, _ = np.histogram(quantised(train_s[train_l == label]), edges, density=True)
        np.testing.assert_allclose(entry["train"][part], want, rtol=1e-9)
    roc = json.loads((tmp_path / "roc.json").read_text())
    assert set(roc) == {"epoch", "train_scored", "validation", "train (final model)"}


def test_multiclass_draws_one_score_plot_per_class(tmp_path):
    rng = np.random.default_rng(15)
    labels = rng.integers(0, 3, 6000)
    probs = torch.tensor(rng.normal(np.eye(3)[labels], 1.0)).softmax(1).numpy()
    metrics = fill(probs, labels, np.ones(6000), 3)
    written = plot_classifier(metrics, None, tmp_path, 1, ["ttH", "tt+bb", "ttZ"])
    names = sorted(p.name for p in written)
    assert names == ["rejection.png", "roc.png", "scores_ttH.png", "scores_ttZ.png", "scores_tt_bb.png"]  # fmt: skip
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert [c["class"] for c in saved["classes"]] == ["ttH", "tt+bb", "ttZ"]
    assert all(c["ks"] == {} and "val" not in c for c in saved["classes"])  # no validation
    k = 1
    want, _ = np.histogram(
        quantised(probs[labels != k, k]), np.asarray(saved["classes"][k]["edges"]), density=True
    )
    np.testing.assert_allclose(saved["classes"][k]["train"]["background"], want, rtol=1e-9)


def test_history_plots_exist_for_one_epoch_and_without_validation(tmp_path):
    history = [{"epoch": 1, "train_loss": 0.6, "train_accuracy": 0.7, "train_auc": 0.8}]
    written = plot_history(history, tmp_path, "run 'x'")
    assert [p.name for p in written] == ["loss.png", "accuracy.png", "auc.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
