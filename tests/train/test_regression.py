"""Regression: a target that is a known linear function of the inputs plus Gaussian noise is
learnt to the noise's own resolution; bias, resolution and IQR resolution equal numpy's on the
saved model's predictions; the exported graph gives values in the target's units; Gaussian NLL
with two targets learns the noise's width."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from rootml.errors import ConfigError
from rootml.train import run_from_params
from rootml.train.regression import RES_BINS, RES_RANGE

from ._generated import SIGMA, checkpoint_outputs, read, standardised, y_true

INPUTS = ["x1", "x2", "x3"]
LINEAR = """import torch

def model(idim):
    return torch.nn.Linear(idim, 1)
"""
MLP = """import torch

def model(idim):
    return torch.nn.Sequential(torch.nn.Linear(idim, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
"""
PARAMS = {"tree": "Events", "branches": INPUTS, "target_branch": "y", "epochs": 3, "batch_size": 32,
          "lr": 0.03, "lr_schedule": "cosine", "lr_min": 3e-4, "device": "cpu",
          "val_fraction": 0.25, "in_memory": 10**8}  # fmt: skip
VAL = slice(1500, 2000)  # the last quarter of each file's 2000 entries


def val_columns(generated, branches):
    parts = [read(generated[name], branches) for name in ("a", "b")]
    return {b: np.concatenate([p[b][VAL] for p in parts]) for b in branches}


def train_target(generated):
    return np.concatenate([read(generated[n], ["y"])["y"][:1500] for n in ("a", "b")])


def test_known_function_reaches_the_noise_resolution(generated, tmp_path):
    (tmp_path / "model.py").write_text(LINEAR)
    run = tmp_path / "run"
    files = [str(generated["a"]), str(generated["b"])]
    summary = run_from_params(files, None, tmp_path / "model.py", PARAMS, run)
    final = summary["final"]
    columns = val_columns(generated, [*INPUTS, "y"])
    x64 = [columns[b].astype(np.float64) for b in INPUTS]
    noise = columns["y"] - y_true(*x64)
    # The best any model can do on these entries is the noise's own spread there. A linear
    # model fitted on 3000 entries adds a parameter error of order sigma * sqrt(4 / 3000), 3% of
    # sigma in quadrature (0.05% in the sum): 1% covers it and the optimiser's last steps.
    assert final["val_resolution"] == pytest.approx(noise.std(), rel=0.01)
    assert abs(final["val_bias"]) < 3 * SIGMA / np.sqrt(len(noise))

    # The metrics are numpy's on the saved model's predictions in the target's units (the
    # target's training mean and std from the file itself).
    y = train_target(generated)
    raw = checkpoint_outputs(run, run / "checkpoint.pt", standardised(run, columns))[:, 0]
    predicted = raw * y.std() + y.mean()
    residual = predicted - columns["y"]
    assert final["val_resolution"] == pytest.approx(residual.std(), rel=1e-5)
    assert final["val_bias"] == pytest.approx(residual.mean(), abs=1e-6)
    width = 2 * RES_RANGE * y.std() / RES_BINS  # the residual histogram's bin
    q1, median, q3 = np.percentile(residual, [25, 50, 75])
    assert final["val_bias_median"] == pytest.approx(median, abs=2 * width)
    assert final["val_resolution_iqr"] == pytest.approx((q3 - q1) / 1.349, abs=3 * width)
    assert summary["final"]["val_events"] == 1000

    # Per-bin response and the plots of the final model.
    numbers = json.loads((run / "plots" / "regression.json").read_text())
    table = numbers["targets"]["y"]["validation"]["per_bin"]
    edges = np.asarray(table["edges"])
    inside = np.clip(np.searchsorted(edges[1:-1], columns["y"], side="right"), 0, None)
    for b in np.flatnonzero(np.bincount(inside, minlength=len(edges) - 1) > 20):
        chosen = inside == b
        assert table["bias"][b] == pytest.approx(residual[chosen].mean(), abs=1e-5)
    for name in ("predicted_vs_true_y", "residuals_y", "response_y", "resolution_y", "loss", "resolution"):  # fmt: skip
        assert (run / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name

    # Export: the graph's output is in the target's units.
    from rootml.export.run import export_run

    export_run(run, tmp_path / "repo", "reg")
    metadata = json.loads((tmp_path / "repo" / "reg" / "1" / "rootml.json").read_text())
    assert metadata["regression"] == {"targets": ["y"], "loss": "mse"}
    session = ort.InferenceSession(str(tmp_path / "repo" / "reg" / "1" / "model.onnx"))
    features = standardised(run, columns)
    feeds = {i.name: features if i.name == "features" else np.ones_like(features, bool)
             for i in session.get_inputs()}  # fmt: skip
    (got,) = session.run(None, feeds)
    np.testing.assert_allclose(got.reshape(-1), predicted, rtol=1e-5, atol=1e-4)


def test_two_targets_with_gaussian_nll_learn_the_noise_width(generated, tmp_path):
    (tmp_path / "model.py").write_text(MLP)
    run = tmp_path / "run"
    files = [str(generated["a"]), str(generated["b"])]
    params = {**PARAMS, "target_branch": ["y", "y2"], "loss": "gaussian_nll", "lr": 0.01,
              "batch_size": 64, "epochs": 4}  # fmt: skip
    summary = run_from_params(files, None, tmp_path / "model.py", params, run)
    final = summary["final"]
    assert {"val_resolution_y", "val_resolution_y2", "val_bias_y2", "val_resolution_iqr_y"} <= set(
        final
    )
    columns = val_columns(generated, [*INPUTS, "y", "y2"])
    # The predicted width of y (exp(log variance / 2) in y's units) is about the noise's sigma
    # (the typical entry's; 15% allows a few epochs of training).
    state_y = np.concatenate([read(generated[n], ["y"])["y"][:1500] for n in ("a", "b")])
    out = checkpoint_outputs(run, run / "checkpoint.pt", standardised(run, columns))
    width = np.exp(out[:, 2] / 2) * state_y.std()
    assert np.median(width) == pytest.approx(SIGMA, rel=0.15)
    # Calibrated: the predicted variance is the squared residual on average, on entries not
    # trained on too (the mean prediction's own error is part of both).
    assert np.sqrt(np.mean(width**2)) == pytest.approx(final["val_resolution_y"], rel=0.15)
    assert final["val_resolution_y2"] < 0.8 * columns["y2"].std()  # x1 x2 learnt in part


def test_regression_refuses_classification_settings(generated, tmp_path):
    (tmp_path / "model.py").write_text(LINEAR)
    files = [str(generated["a"]), str(generated["b"])]
    with pytest.raises(ConfigError, match="regression loss"):
        run_from_params(files, [1, 0], tmp_path / "model.py", {**PARAMS, "target_branch": None, "loss": "mse"}, tmp_path / "a")  # fmt: skip
    with pytest.raises(ConfigError, match="for classification"):
        run_from_params(files, None, tmp_path / "model.py", {**PARAMS, "class_weights": [1, 2]}, tmp_path / "b")  # fmt: skip
