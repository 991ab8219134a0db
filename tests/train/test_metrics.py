"""Epoch metrics against sklearn and numpy: weighted loss, accuracy, ROC AUC (binary from one
probability or two softmax outputs, one-vs-rest for several classes), state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from rootml.train import EpochMetrics, roc_from_histograms


def _metrics(probs, labels, weights, losses, n_classes=2, batches=4):
    """EpochMetrics fed in `batches` pieces, as the loop does."""
    metrics = EpochMetrics(n_classes)
    for part in np.array_split(np.arange(len(labels)), batches):
        metrics.update(
            torch.tensor((losses[part] * weights[part]).sum()),
            torch.tensor(probs[part]),
            torch.tensor(labels[part]),
            torch.tensor(weights[part]),
        )
    return metrics


def test_binary_auc_accuracy_loss_equal_sklearn_and_numpy():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 20_000)
    scores = np.clip(rng.normal(0.4 + 0.25 * labels, 0.2), 0, 1).astype(np.float32)
    weights = rng.random(20_000)
    losses = rng.random(20_000)
    result = _metrics(scores, labels, weights, losses).result("x")
    assert result["x_auc"] == pytest.approx(
        roc_auc_score(labels, scores, sample_weight=weights), abs=2e-4
    )
    correct = (scores > 0.5) == labels
    assert result["x_accuracy"] == pytest.approx((weights * correct).sum() / weights.sum())
    assert result["x_loss"] == pytest.approx((weights * losses).sum() / weights.sum())
    assert result["x_events"] == 20_000


@pytest.mark.parametrize("separation", [3.0, 8.0])
def test_auc_of_confident_scores_near_0_and_1(separation):
    """A well-trained sigmoid piles scores into the first and last bins: still within 2e-4."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 50_000)
    logits = rng.normal(separation * (2 * labels - 1), 2.0)
    scores = (1 / (1 + np.exp(-logits))).astype(np.float32)
    weights = np.ones(50_000)
    result = _metrics(scores, labels, weights, np.zeros(50_000)).result("x")
    assert result["x_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=2e-4)


def test_two_softmax_outputs_give_the_auc_of_class_1():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 10_000)
    logits = rng.normal(np.stack([-labels, labels], 1), 1.0)
    probs = torch.tensor(logits).softmax(1).numpy()
    weights = rng.random(10_000) + 0.5
    metrics = _metrics(probs, labels, weights, np.zeros(10_000))
    expected = roc_auc_score(labels, probs[:, 1], sample_weight=weights)
    assert metrics.result("x")["x_auc"] == pytest.approx(expected, abs=2e-4)
    assert metrics.roc()[2] == pytest.approx(expected, abs=2e-4)
    correct = probs.argmax(1) == labels
    assert metrics.result("x")["x_accuracy"] == pytest.approx(
        (weights * correct).sum() / weights.sum()
    )


def test_multiclass_auc_is_the_one_vs_rest_mean():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 15_000)
    logits = rng.normal(np.eye(3)[labels] * 1.5, 1.0)
    probs = torch.tensor(logits).softmax(1).numpy()
    weights = rng.random(15_000)
    result = _metrics(probs, labels, weights, np.zeros(15_000), n_classes=3).result("x")
    expected = roc_auc_score(
        labels, probs, multi_class="ovr", average="macro", sample_weight=weights
    )
    assert result["x_auc"] == pytest.approx(expected, abs=2e-4)


def test_state_round_trip_continues_the_same_sums():
    rng = np.random.default_rng(5)
    labels, scores = rng.integers(0, 2, 1000), rng.random(1000).astype(np.float32)
    whole = _metrics(scores, labels, np.ones(1000), np.ones(1000), batches=1)
    first = _metrics(scores[:600], labels[:600], np.ones(600), np.ones(600), batches=1)
    second = EpochMetrics.from_state_dict(first.state_dict())
    second.update(
        torch.tensor(400.0),
        torch.tensor(scores[600:]),
        torch.tensor(labels[600:]),
        torch.ones(400, dtype=torch.float64),
    )
    assert second.result("x") == whole.result("x")


def test_roc_of_separated_and_one_class_histograms():
    fpr, tpr, auc = roc_from_histograms(np.array([0, 0, 5.0]), np.array([5.0, 0, 0]))
    assert auc == 1.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.isnan(roc_from_histograms(np.array([0, 0, 5.0]), np.zeros(3))[2])
