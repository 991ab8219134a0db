"""Whole runs from MLaaS4HEP-style inputs: the CLI writes every artefact, the validation entries
are held out and the Specs fitted on the training entries only, resume equals an uninterrupted
run, DDP over two processes trains on every training entry exactly once per epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import uproot

from rootml.train import load_checkpoint, load_params, run_from_params, split_ranges
from rootml.train.params import dataset_arguments
from rootml.transforms import Specs

BRANCHES = ["nJet", "Jet_pt", "Jet_btagDeepB", "HT", "MET_pt"]
PARAMS = {
    "nevts": -1,
    "shuffle": True,
    "chunk_size": 700,
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
    "debug_entries": True,
}
MODEL = """import torch

def model(idim):
    return torch.nn.Sequential(torch.nn.Linear(idim, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 1), torch.nn.Sigmoid())
"""
TRAIN_PER_FILE = 2250  # 3000 entries per file, the last quarter held out
# The runs made once per session (tests/train/conftest.py: single_run, ddp_run) and read by
# several tests: 1000/1000/250-entry units, uneven shards over two ranks.
SHARED = {**PARAMS, "chunk_size": 1000, "epochs": 2}


def run_cli(tth_data, out, *extra, torchrun=False, params=None) -> str:
    """`rootml train` in a subprocess (two processes under torchrun), off a terminal; its
    stderr (the progress lines)."""
    params_file = out.parent / f"{out.name}-params.json"
    params_file.write_text(json.dumps(params or PARAMS))
    model = write_model(out.parent)
    args = ["--files", tth_data / "files.txt", "--labels", tth_data / "labels.txt"]
    args += ["--model", model, "--params", params_file, "--out", out, *extra]
    prefix = [sys.executable]
    if torchrun:
        prefix += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ROOTML_PROGRESS", None)
    result = subprocess.run(
        [*prefix, "-m", "rootml", "train", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def history_of(run):
    return json.loads((run / "history.json").read_text())


def write_model(folder):
    path = folder / "model.py"
    path.write_text(MODEL)
    return path


def trained_entries(run, epoch):
    """(file, entry) pairs trained on in `epoch` as sorted keys file * 10**6 + entry, and the
    number of entries each rank trained on."""
    seen = np.load(run / "debug" / f"entries_epoch_{epoch:03d}.npz")
    return np.sort(seen["file_index"] * 10**6 + seen["entry"]), np.bincount(seen["rank"])


EXPECTED_TRAIN = np.sort(np.concatenate([f * 10**6 + np.arange(TRAIN_PER_FILE) for f in (0, 1)]))


def test_cli_writes_every_artefact(tth_data, single_run):
    run, _ = single_run
    history = history_of(run)
    for name in (
        "checkpoint.pt",
        "checkpoints/epoch_001.pt",
        "checkpoints/epoch_002.pt",
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
    for name in ("loss", "accuracy", "auc", "roc"):
        assert (run / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert len(history) == 2 and history[-1]["val_auc"] > 0.75
    assert all(row["train_events"] == 4500 and row["val_events"] == 1500 for row in history)
    lines = (run / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 3 and header[0] == "epoch"
    assert float(lines[2].split(",")[header.index("val_auc")]) == history[-1]["val_auc"]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_entries"] == 4500 and summary["val_entries"] == 1500
    assert summary["events_per_s"] > 0 and len(summary["epoch_seconds"]) == 2
    assert summary["final"] == history[-1] and summary["device"].startswith("cpu")
    assert {"rootml", "torch", "uproot", "numpy", "python"} <= set(summary["versions"])

    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 2 and state["metrics"] == history[-1]
    assert state["model_args"] == {"idim": 11} and state["layout"] == "flat"
    assert state["labels"] == ["background", "signal"] and state["normalize"] == "standard"
    assert state["feature_names"][:2] == ["nJet", "Jet_pt[0]"]
    assert {"model_state", "optimizer_state", "dataset_state", "specs", "params"} <= set(state)
    assert Specs.from_dict(state["specs"]).to_dict() == Specs.load(run / "specs.json").to_dict()

    # Normalisation statistics come from the training entries only, never the held-out ones.
    ht = [uproot.open(tth_data / f)["Events"]["HT"].array(library="np") for f in FILES]
    specs = Specs.load(run / "specs.json")
    train_ht = np.concatenate([values[:TRAIN_PER_FILE] for values in ht])
    assert specs.branches["HT"].count == 4500
    assert specs.branches["HT"].mean == pytest.approx(train_ht.astype(np.float64).mean(), rel=1e-9)

    for epoch in (1, 2):
        keys, _ = trained_entries(run, epoch)
        np.testing.assert_array_equal(keys, EXPECTED_TRAIN)


FILES = ("signal.root", "background.root")


def test_resume_reaches_the_same_metrics(tth_data, tmp_path):
    args = (str(tth_data / "files.txt"), str(tth_data / "labels.txt"), write_model(tmp_path))
    params = {**PARAMS, "epochs": 2}  # one epoch, then the resumed one
    full = run_from_params(*args, params, tmp_path / "full")
    run_from_params(*args, {**params, "epochs": 1}, tmp_path / "cut")
    specs_before = (tmp_path / "cut" / "specs.json").read_text()
    resumed = run_from_params(*args, params, tmp_path / "cut", resume=True)
    assert resumed["epochs"] == 2 and (tmp_path / "cut" / "specs.json").read_text() == specs_before
    assert resumed["new_epochs"] == 1
    for key in ("train_loss", "train_auc", "val_loss", "val_auc", "val_accuracy"):
        assert resumed["final"][key] == pytest.approx(full["final"][key], abs=1e-6)


@pytest.mark.slow
def test_ddp_two_processes_see_every_entry_once(single_run, ddp_run):
    single, ddp = history_of(single_run[0]), history_of(ddp_run)
    assert len(single) == len(ddp) == SHARED["epochs"]
    for one, two in zip(single, ddp):
        assert two["train_events"] == one["train_events"] == 4500  # summed over both ranks
        assert two["val_events"] == 1500
    epochs = range(1, SHARED["epochs"] + 1)
    for epoch in epochs:
        keys, per_rank = trained_entries(ddp_run, epoch)
        np.testing.assert_array_equal(keys, EXPECTED_TRAIN)  # each once, none held out
        assert len(per_rank) == 2 and per_rank.min() > 0
    # Uneven shards (Join keeps the rank that runs out from hanging the other): at least one
    # epoch gives the ranks different numbers of entries.
    assert any(len(set(trained_entries(ddp_run, e)[1])) == 2 for e in epochs)
    # Two ranks average gradients over twice the rows per step: close, not equal.
    assert ddp[-1]["val_auc"] == pytest.approx(single[-1]["val_auc"], abs=0.03)
    assert ddp[-1]["val_loss"] == pytest.approx(single[-1]["val_loss"], abs=0.05)
    summary = json.loads((ddp_run / "summary.json").read_text())
    assert summary["world_size"] == 2


def test_params_map_mlaas4hep_keys_to_dataset_arguments():
    params = load_params({**PARAMS, "exclude_branches": ["genWeight"], "nevts": 1000})
    arguments = dataset_arguments(params)
    assert arguments["tree"] == "Events" and arguments["branches"] == BRANCHES
    assert arguments["identifiers"] == ["run", "event"] and arguments["exclude"] == ["genWeight"]
    assert arguments["chunk_size"] == 700 and arguments["batch_size"] == 200
    assert params["nevts"] == 1000 and params["normalize"] == "standard"
    assert load_params({"nevts": -1})["nevts"] is None
    with pytest.raises(ValueError, match="unknown parameter 'epoch'"):
        load_params({"epoch": 3})


def test_split_ranges_hold_out_the_last_fraction_of_each_file():
    train, val = split_ranges([(0, 3000), (100, 1100), (5, 5)], 0.25)
    assert train == [(0, 2250), (100, 850), (5, 5)]
    assert val == [(2250, 3000), (850, 1100), (5, 5)]
    with pytest.raises(ValueError):
        split_ranges([(0, 10)], 1.0)


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
        "epochs": 2,
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
    meta = json.loads((tmp_path / "models" / "sets" / "1" / "rootml.json").read_text())
    assert version == 1 and meta["layout"] == "collection" and meta["parity"]["max_abs_diff"] < 1e-5


def test_hist_draws_every_feature_branch_per_class(tth_data, tmp_path):
    params = {**PARAMS, "epochs": 1, "hist": "hist", "debug_entries": False}
    args = (str(tth_data / "files.txt"), str(tth_data / "labels.txt"), write_model(tmp_path))
    run_from_params(*args, params, tmp_path / "run")
    drawn = sorted(path.stem for path in (tmp_path / "run" / "hist").glob("*.png"))
    assert drawn == sorted(BRANCHES)  # the identifiers run and event are not features


# Mistakes that would waste a run: each ends in one line and exit status 2 before training.
QUICK = {**PARAMS, "nevts": 800, "epochs": 1, "debug_entries": False}


def train(tth_data, tmp_path, capsys, *extra, params=QUICK, model=MODEL, labels=True):
    """`rootml train` through rootml.cli.main; returns (exit status, stdout, stderr)."""
    from rootml.cli import main

    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps(params))
    model_file = tmp_path / "model.py"
    model_file.write_text(model)
    args = ["--files", tth_data / "files.txt", "--model", model_file, "--params", params_file]
    args += ["--labels", tth_data / "labels.txt"] if labels else []
    status = main(["train", *map(str, args), *map(str, extra)])
    out, err = capsys.readouterr()
    return status, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rootml train: error: "), err
    return lines[0]


def test_model_of_the_wrong_input_size_is_refused_in_one_line(tth_data, tmp_path, capsys):
    wrong = MODEL.replace("Linear(idim, 16)", "Linear(178, 16)")
    status, _, err = train(tth_data, tmp_path, capsys, "--out", tmp_path / "run", model=wrong)
    idim = 3 + 2 * PARAMS["max_len"]  # nJet, HT, MET_pt and 4 jets x (pt, btagDeepB)
    assert status == 2
    assert one_line(err) == (
        f"rootml train: error: {tmp_path / 'model.py'}: model(idim={idim}) does not take a batch "
        f"of features (2, {idim}): RuntimeError: mat1 and mat2 shapes cannot be multiplied "
        f"(2x{idim} and 178x16)"
    )
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_model_with_fewer_outputs_than_classes_is_refused(tth_data, tmp_path):
    from rootml.errors import ModelError

    with pytest.raises(ModelError, match=r"returns one probability per entry, but the labels "
                       r"have 3 classes \(0-2\): return \(B, 3\) logits"):  # fmt: skip
        run_from_params(str(tth_data / "files.txt"), [2, 0], write_model(tmp_path), QUICK,
                        tmp_path / "run")  # fmt: skip


def test_training_without_labels_is_refused(tth_data, tmp_path, capsys):
    status, _, err = train(tth_data, tmp_path, capsys, "--out", tmp_path / "run", labels=False)
    assert status == 2 and "no labels: every file would be class 0" in one_line(err)
    status, _, err = train(
        tth_data, tmp_path, capsys, "--out", tmp_path / "run", "--labels", 1, 1, labels=False
    )
    assert status == 2 and "every file has label 1" in one_line(err)
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_needs_resume_or_overwrite(tth_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(tth_data, tmp_path, capsys, "--out", run, "--epochs", 2)[0] == 0
    before = (run / "checkpoint.pt").read_bytes()

    status, _, err = train(tth_data, tmp_path, capsys, "--out", run)
    assert status == 2 and "already holds a run" in one_line(err) and "--overwrite" in err
    status, _, err = train(tth_data, tmp_path, capsys, "--out", run, "--resume", "--epochs", 1)
    assert status == 2 and "has trained 2 epochs, more than epochs=1" in one_line(err)
    status, out, err = train(tth_data, tmp_path, capsys, "--out", run, "--resume", "--epochs", 2)
    assert status == 0 and err == ""
    assert (
        out
        == f"{run} already has 2 epochs: nothing to train (give --epochs above 2 to continue it)\n"
    )
    assert (run / "checkpoint.pt").read_bytes() == before
    status, _, err = train(tth_data, tmp_path, capsys, "--out", tmp_path / "new", "--resume")
    assert status == 2 and "holds no run (checkpoint.pt and specs.json) to continue" in one_line(
        err
    )

    # --overwrite starts again: no stale epoch_002.pt or history row from the old run.
    assert train(tth_data, tmp_path, capsys, "--out", run, "--overwrite")[0] == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001.pt"]
    assert len(json.loads((run / "history.json").read_text())) == 1
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1


def test_printed_events_per_second_matches_the_printed_time(tth_data, tmp_path, capsys):
    import re

    run = tmp_path / "run"
    train(tth_data, tmp_path, capsys, "--out", run, "--epochs", 1)
    status, out, _ = train(tth_data, tmp_path, capsys, "--out", run, "--epochs", 3, "--resume")
    history = json.loads((run / "history.json").read_text())
    found = re.match(
        r"trained epochs 2-3: ([\d,]+) events in ([\d.]+) s \(([\d,]+) events/s; ", out
    )
    assert status == 0 and found, out
    events, seconds, rate = (float(g.replace(",", "")) for g in found.groups())
    assert events == sum(row["train_events"] + row["val_events"] for row in history[1:]) == 1600
    exact = sum(row["seconds"] for row in history[1:])  # history.json keeps full precision
    # Each printed figure is the exact one rounded: the time to 0.1 s, the rate to 1 event/s.
    assert abs(seconds - exact) <= 0.05 + 1e-9
    assert abs(rate - events / exact) <= 0.5 + 1e-9
    # ...so the rate agrees with the printed time to the printed time's precision.
    assert events / (seconds + 0.05) - 0.5 <= rate <= events / max(seconds - 0.05, 1e-9) + 0.5


def test_resume_inside_an_epoch_beyond_epochs_is_refused(tmp_path):
    import torch

    from rootml.errors import ConfigError
    from rootml.train.folder import check_run_folder

    # A checkpoint taken inside epoch 3 (two epochs completed), as fit's checkpoint_every writes.
    torch.save({"model_state": {}, "epoch": 2, "partial": {"step": 5}}, tmp_path / "checkpoint.pt")
    (tmp_path / "specs.json").write_text("{}")
    assert check_run_folder(tmp_path, resume=True, overwrite=False, epochs=3) == 2
    with pytest.raises(ConfigError, match="is inside epoch 3, more than epochs=2"):
        check_run_folder(tmp_path, resume=True, overwrite=False, epochs=2)
    with pytest.raises(ConfigError, match="--resume .* or --overwrite .*, not both"):
        check_run_folder(tmp_path, resume=True, overwrite=True, epochs=3)
