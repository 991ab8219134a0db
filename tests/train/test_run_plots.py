"""Every `rootml train` run draws the overtraining check, ROC and rejection plots, and the
numbers drawn are those of the trained model: its scores recomputed here on the held-out and
training entries (uproot + numpy features, the checkpoint's model) give the same curves,
histograms and KS statistics. Off a terminal its output is table lines, no dict, no torchdata
deprecation warning."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from scipy.stats import kstwobign

from rootml.train import load_checkpoint
from rootml.train.metrics import BINS
from rootml.transforms import Specs

from ._outside import outside_features
from .test_run import BRANCHES, TRAIN_PER_FILE

EVENTS = 3000  # per file (conftest)
FILES = ("signal.root", "background.root")  # labels 1, 0 (labels.txt)


@pytest.fixture(scope="module")
def run(single_run):
    """The session's 2-epoch CLI run off a terminal (conftest); (run folder, stderr)."""
    return single_run


def scores(run, tth_data, entries):
    """The checkpoint's model on entries [start, stop) of each file, features built with
    uproot + numpy and the run's Specs statistics; (signal scores, background scores)."""
    specs = Specs.load(run / "specs.json")
    stats = {b: (specs.branches[b].mean, specs.branches[b].std) for b in BRANCHES}
    spec = importlib.util.spec_from_file_location("run_model", run / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = load_checkpoint(run / "checkpoint.pt")
    model = module.model(**state["model_args"])
    model.load_state_dict(state["model_state"])
    model.eval()
    result = []
    for name in FILES:
        features = outside_features([tth_data / name], BRANCHES, 4, stats, entries)
        with torch.no_grad():
            result.append(model(torch.from_numpy(features)).reshape(-1).numpy())
    return result


def test_every_plot_is_written_and_the_output_reads_as_a_table(run):
    folder, stderr = run
    for name in ("loss", "accuracy", "auc", "roc", "rejection", "scores"):
        assert (folder / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    assert (folder / "plots" / "roc.json").is_file() and (
        folder / "plots" / "scores.json"
    ).is_file()
    assert "set_vital" not in stderr and "{'epoch'" not in stderr
    assert "\r" not in stderr  # no bar off a terminal
    table = [line.split(": ", 1)[1] for line in stderr.splitlines() if " | " in line]
    assert table[0].split()[:3] == ["epoch", "|", "train"] and len(table) == 3
    history = json.loads((folder / "history.json").read_text())
    assert table[2].split()[:3] == ["2/2", "|", f"{history[1]['train_loss']:.4f}"]


def test_validation_curves_and_histograms_are_the_models_scores(run, tth_data):
    folder, _ = run
    signal, background = scores(folder, tth_data, (TRAIN_PER_FILE, EVENTS))
    roc = json.loads((folder / "plots" / "roc.json").read_text())
    assert roc["epoch"] == 2 and roc["train_scored"] == "final model"
    (curve,) = roc["validation"]
    cuts = np.asarray(curve["score_cut"])
    # At each drawn point: the fraction of each class scoring above its cut, counted here.
    # A score within float32 rounding of a bin boundary may land on either side: 2 events.
    eff_s = (signal[None, :] >= cuts[:, None]).mean(1)
    eff_b = (background[None, :] >= cuts[:, None]).mean(1)
    assert np.abs(eff_s - curve["signal_efficiency"]).max() <= 2 / len(signal)
    assert np.abs(eff_b - curve["background_efficiency"]).max() <= 2 / len(background)
    assert len(signal) == len(background) == EVENTS - TRAIN_PER_FILE

    entry = json.loads((folder / "plots" / "scores.json").read_text())["classes"][0]
    edges = np.asarray(entry["edges"])
    for part, values in (("signal", signal), ("background", background)):
        counts, _ = np.histogram(np.clip(values, 0, 1), edges)
        drawn = np.asarray(entry["val"][part]) * np.diff(edges) * len(values)
        assert np.abs(drawn - counts).sum() <= 2.0 + 1e-6, part


def test_ks_tests_compare_the_final_model_on_train_and_validation(run, tth_data):
    folder, _ = run
    train = scores(folder, tth_data, (0, TRAIN_PER_FILE))
    val = scores(folder, tth_data, (TRAIN_PER_FILE, EVENTS))
    ks = json.loads((folder / "plots" / "scores.json").read_text())["classes"][0]["ks"]
    for part, a, b in (("signal", train[0], val[0]), ("background", train[1], val[1])):
        fine_a = np.round(np.clip(a, 0, 1) * (BINS - 1))
        fine_b = np.round(np.clip(b, 0, 1) * (BINS - 1))
        grid = np.union1d(fine_a, fine_b)
        d = np.abs(
            np.searchsorted(np.sort(fine_a), grid, "right") / len(a)
            - np.searchsorted(np.sort(fine_b), grid, "right") / len(b)
        ).max()
        assert ks[part]["n_train"] == len(a) and ks[part]["n_val"] == len(b)
        assert ks[part]["D"] == pytest.approx(d, abs=2 / len(b))
        z = ks[part]["D"] * np.sqrt(len(a) * len(b) / (len(a) + len(b)))
        assert ks[part]["p_value"] == pytest.approx(kstwobign.sf(z), rel=1e-9)
