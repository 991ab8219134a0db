"""Training through rootml equals training outside it; resume equals an uninterrupted run;
DDP over two processes sees every entry once; the CLI writes every artefact."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import awkward as ak
import numpy as np
import pytest
import torch
import uproot
from sklearn.metrics import roc_auc_score

from rootml import RootIterableDataset
from rootml.datasets import fit_specs
from rootml.train import fit, roc_from_histograms, run_from_params
from rootml.train.metrics import EpochMetrics

BRANCHES = ["nJet", "Jet_pt", "Jet_btagDeepB", "HT", "MET_pt"]  # stored order = feature order
PARAMS = {
    "nevts": -1,
    "shuffle": True,
    "chunk_size": 1000,
    "epochs": 3,
    "batch_size": 200,
    "branch": "Events",
    "selected_branches": BRANCHES,
    "identifier": ["run", "event"],
    "lr": 0.003,
    "val_fraction": 0.25,
    "seed": 7,
    "device": "cpu",
    "max_len": 4,
}
MODEL = "import torch\n\ndef model(idim):\n    return torch.nn.Sequential(torch.nn.Linear(idim, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1), torch.nn.Sigmoid())\n"


def small_model(idim):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(idim, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1), torch.nn.Sigmoid()
    )


def outside_features(files, max_len):
    """The same events with plain uproot + awkward + numpy: first `max_len` items, padding 0,
    standardised with each branch's mean and std over all its values (every item of a jagged
    branch, as Specs defines them)."""
    arrays = [uproot.open(path)["Events"].arrays(BRANCHES) for path in files]
    columns = []
    for name in BRANCHES:
        values = ak.concatenate([a[name] for a in arrays])
        flat = ak.to_numpy(ak.flatten(values) if values.ndim > 1 else values).astype(np.float64)
        mean, std = flat.mean(), flat.std() or 1.0
        if values.ndim == 1:
            columns.append(((flat - mean) / std)[:, None])
            continue
        padded = ak.to_numpy(ak.fill_none(ak.pad_none(values, max_len, clip=True), np.nan)).astype(
            np.float64
        )
        columns.append(np.where(np.isnan(padded), 0.0, (padded - mean) / std))
    return np.concatenate(columns, axis=1).astype(np.float32)


def test_auc_from_histograms_equals_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 20_000)
    scores = np.clip(rng.normal(0.4 + 0.25 * labels, 0.2), 0, 1)
    weights = rng.random(20_000)
    metrics = EpochMetrics(2)
    metrics.update(
        torch.tensor(0.0), torch.tensor(scores), torch.tensor(labels), torch.tensor(weights)
    )
    assert metrics.result("x")["x_auc"] == pytest.approx(
        roc_auc_score(labels, scores, sample_weight=weights), abs=2e-4
    )
    fpr, tpr, auc = roc_from_histograms(np.array([0, 0, 5.0]), np.array([5.0, 0, 0]))
    assert auc == 1.0 and fpr[-1] == tpr[-1] == 1.0


def test_inside_equals_outside(tth_data, tmp_path):
    files = [str(tth_data / "signal.root"), str(tth_data / "background.root")]
    specs = fit_specs(files, branches=BRANCHES, max_len=4)
    ds = RootIterableDataset(
        files,
        labels=[1, 0],
        branches=BRANCHES,
        specs=specs,
        normalize="standard",
        batch_size=200,
        chunk_size=700,
    )
    inside = fit(
        small_model(len(ds.feature_names)),
        ds,
        out_dir=tmp_path / "run",
        epochs=3,
        lr=3e-3,
        device="cpu",
    )

    features = torch.from_numpy(outside_features(files, 4))
    labels = torch.cat([torch.ones(3000), torch.zeros(3000)])
    model = small_model(features.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, labels), batch_size=200
    )
    for epoch in range(3):
        losses, scores = [], []
        for x, y in loader:
            p = model(x).reshape(-1)
            loss = torch.nn.functional.binary_cross_entropy(p, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item() * len(y))
            scores.append(p.detach())
        outside_loss = sum(losses) / len(labels)
        outside_auc = roc_auc_score(labels.numpy(), torch.cat(scores).numpy())
        # Same events, order, initialisation and arithmetic: the stated tolerance is float32
        # summation order (1e-4 on the loss) and the AUC's score binning (1e-3).
        assert inside[epoch]["train_loss"] == pytest.approx(outside_loss, abs=1e-4)
        assert inside[epoch]["train_auc"] == pytest.approx(outside_auc, abs=1e-3)
        assert inside[epoch]["train_events"] == 6000


def run_cli(tth_data, out, *extra, torchrun=False):
    params = out.parent / f"{out.name}-params.json"
    params.write_text(json.dumps(PARAMS))
    model = out.parent / "model.py"
    model.write_text(MODEL)
    args = [
        "train",
        "--files",
        str(tth_data / "files.txt"),
        "--labels",
        str(tth_data / "labels.txt"),
        "--model",
        str(model),
        "--params",
        str(params),
        "--out",
        str(out),
        *extra,
    ]
    prefix = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        if torchrun
        else [sys.executable]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*prefix, "-m", "rootml", *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "history.json").read_text())


def test_cli_writes_every_artefact(tth_data, tmp_path):
    history = run_cli(tth_data, tmp_path / "run")
    run = tmp_path / "run"
    for name in (
        "checkpoint.pt",
        "checkpoints/epoch_003.pt",
        "specs.json",
        "params.json",
        "model.py",
        "history.csv",
        "summary.json",
        "plots/loss.png",
        "plots/accuracy.png",
        "plots/auc.png",
        "plots/roc.png",
    ):
        assert (run / name).is_file(), name
    assert (run / "plots/roc.png").read_bytes()[:4] == b"\x89PNG"
    assert len(history) == 3 and history[-1]["val_auc"] > 0.75
    assert all(row["train_events"] == 4500 and row["val_events"] == 1500 for row in history)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_entries"] == 4500 and summary["events_per_s"] > 0
    lines = (run / "history.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("epoch,")


def test_resume_reaches_the_same_metrics(tth_data, tmp_path):
    full = run_from_params(
        str(tth_data / "files.txt"),
        str(tth_data / "labels.txt"),
        write_model(tmp_path),
        PARAMS,
        tmp_path / "full",
    )
    run_from_params(
        str(tth_data / "files.txt"),
        str(tth_data / "labels.txt"),
        write_model(tmp_path),
        {**PARAMS, "epochs": 1},
        tmp_path / "cut",
    )
    resumed = run_from_params(
        str(tth_data / "files.txt"),
        str(tth_data / "labels.txt"),
        write_model(tmp_path),
        PARAMS,
        tmp_path / "cut",
        resume=True,
    )
    for key in ("train_loss", "val_loss", "val_auc", "val_accuracy"):
        assert resumed["final"][key] == pytest.approx(full["final"][key], abs=1e-6)


def write_model(folder):
    path = folder / "model.py"
    path.write_text(MODEL)
    return path


@pytest.mark.slow
def test_ddp_two_processes_see_every_entry_once(tth_data, tmp_path):
    single = run_cli(tth_data, tmp_path / "single")
    ddp = run_cli(tth_data, tmp_path / "ddp", torchrun=True)
    for one, two in zip(single, ddp):
        assert two["train_events"] == one["train_events"] == 4500  # summed over both ranks
        assert two["val_events"] == 1500
    # Two ranks average gradients over twice the rows per step: close, not equal.
    assert ddp[-1]["val_auc"] == pytest.approx(single[-1]["val_auc"], abs=0.03)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2


COLLECTION_MODEL = """import torch

class Model(torch.nn.Module):
    def __init__(self, inputs):
        super().__init__()
        channels, length = inputs["Jet"]
        self.jets = torch.nn.Linear(channels, 8)
        self.head = torch.nn.Sequential(torch.nn.Linear(8 + inputs["features"], 8), torch.nn.ReLU(),
                                        torch.nn.Linear(8, 1), torch.nn.Sigmoid())

    def forward(self, features, Jet, Jet_mask):
        per_jet = self.jets(Jet.transpose(1, 2))                       # (B, N, 8)
        pooled = (per_jet * Jet_mask.unsqueeze(-1)).sum(1) / Jet_mask.sum(1, keepdim=True).clamp_min(1)
        return self.head(torch.cat([pooled, features], 1))

def model(inputs):
    return Model(inputs)
"""


def test_collection_layout_trains_and_exports(tth_data, tmp_path):
    model_file = tmp_path / "set_model.py"
    model_file.write_text(COLLECTION_MODEL)
    params = {
        **PARAMS,
        "layout": "collection",
        "selected_branches": ["HT", "MET_pt", "Jet_pt", "Jet_eta", "Jet_btagDeepB"],
    }
    summary = run_from_params(
        str(tth_data / "files.txt"),
        str(tth_data / "labels.txt"),
        model_file,
        params,
        tmp_path / "run",
    )
    assert summary["final"]["val_auc"] > 0.7 and summary["final"]["train_events"] == 4500
    from rootml.export import export_run

    version = export_run(tmp_path / "run", tmp_path / "models", "sets")
    meta = json.loads((tmp_path / "models" / "sets" / "rootml.json").read_text())
    assert version == 1 and meta["layout"] == "collection" and meta["parity"]["max_abs_diff"] < 1e-5
