"""`rootml train` on the same events kept as a TTree (Jet_Px with counter nJet), as an RNTuple
of record collections written by uproot (Jet.Px) and as Parquet (a list of records): the same
features, hence the same training history, epoch by epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import awkward as ak
import uproot

from tests.conftest import HZZ

MODEL = """import torch

def model(idim):
    return torch.nn.Sequential(torch.nn.Linear(idim, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 1), torch.nn.Sigmoid())
"""
PARAMS = {"epochs": 2, "batch_size": 256, "chunk_size": 600, "shuffle": True, "seed": 3,
          "lr": 0.01, "val_fraction": 0.25, "device": "cpu", "max_len": {"Jet": 3},
          "normalize": "standard", "num_workers": 0}  # fmt: skip


def write(folder, kind, part):
    a = uproot.open(HZZ)["events"].arrays(["Jet_Px", "Jet_Py", "MET_px", "MET_py"])[part]
    arrays = {
        "Jet": ak.zip({"Px": a.Jet_Px, "Py": a.Jet_Py}),
        "MET_px": a.MET_px,
        "MET_py": a.MET_py,
    }
    name = folder / f"{kind}-{part.start}.{'parquet' if kind == 'parquet' else 'root'}"
    if kind == "parquet":
        ak.to_parquet(
            ak.zip(arrays, depth_limit=1), name, row_group_size=2000
        )  # one group: the units of the TTree
    else:
        with uproot.recreate(name) as out:
            if kind == "ttree":
                out.mktree("Events", {k: v.type.content for k, v in arrays.items()})
                out["Events"].extend(arrays)
            else:
                out["Events"] = arrays
    return name


def train(folder, kind, branches):
    files = [write(folder, kind, part) for part in (slice(0, 1200), slice(1200, None))]
    (folder / f"{kind}.txt").write_text("\n".join(map(str, files)) + "\n")
    (folder / "labels.txt").write_text("1\n0\n")
    (folder / "model.py").write_text(MODEL)
    params = folder / f"{kind}-params.json"
    params.write_text(json.dumps({**PARAMS, "tree": "Events", "branches": branches}))
    out = folder / kind
    args = ["--files", folder / f"{kind}.txt", "--labels", folder / "labels.txt", "--model",
            folder / "model.py", "--params", params, "--out", out]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "rootml", "train", *map(str, args)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    specs = json.loads((out / "specs.json").read_text())
    history = json.loads((out / "history.json").read_text())
    timing = ("seconds", "events_per_s")
    return [{k: v for k, v in epoch.items() if k not in timing} for epoch in history], specs[
        "feature_names"
    ]


def test_rntuple_records_and_parquet_train_as_their_ttree_twin(tmp_path):
    history, names = train(tmp_path, "ttree", ["Jet_P*", "MET_*"])
    assert names == [*(f"Jet_P{c}[{i}]" for c in "xy" for i in range(3)), "MET_px", "MET_py"]
    for kind in ("rntuple", "parquet"):
        other, other_names = train(tmp_path, kind, ["Jet.*", "MET_*"])
        assert other_names == [n.replace("Jet_", "Jet.") for n in names]
        assert other == history, kind  # losses, accuracies, AUCs: equal to the last bit
