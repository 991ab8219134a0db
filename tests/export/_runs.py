"""Training run folders written by hand per the checkpoint contract (not by rootml train), shared
by the export and serving tests."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from rootml.transforms import CollectionLayout

BRANCHES = ["MET_px", "MET_py", "Jet_Px", "Jet_Py", "Jet_E", "Muon_Px", "Muon_Py"]
LABELS = ["background", "signal"]
ROWS = 600

FLAT_MODEL = """
import torch

def model(idim):
    return torch.nn.Sequential(
        torch.nn.Linear(idim, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1), torch.nn.Sigmoid()
    )
"""

MASKED_MODEL = """
import torch

class Masked(torch.nn.Module):
    def __init__(self, idim):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2 * idim, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
        )

    def forward(self, features, mask):
        x = torch.cat([features * mask.float(), mask.float()], dim=1)
        return torch.softmax(self.net(x), dim=1)

def model(idim):
    return Masked(idim)
"""


def import_model(path: Path):
    spec = importlib.util.spec_from_file_location(f"test_run_model_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.model


def make_run(
    folder: Path,
    source: str,
    specs,
    *,
    layout: str = "flat",
    normalize: str | None = "standard",
    summary: dict | None = None,
    seed: int = 0,
) -> torch.nn.Module:
    """A run folder per the contract (model.py, specs.json, checkpoint.pt, checkpoints/,
    summary.json); returns the model, with the weights saved, in eval mode."""
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(textwrap.dedent(source))
    specs.save(folder / "specs.json")
    if layout == "flat":
        feature_names = specs.feature_names
        model_args = {"idim": len(feature_names)}
    else:
        layout_object = CollectionLayout(specs)
        feature_names = layout_object.feature_names
        inputs = {"features": [len(feature_names)]}
        for key, branches in layout_object.collections.items():
            inputs[key] = [len(branches), layout_object.lengths[key]]
        model_args = {"inputs": inputs}
    torch.manual_seed(seed)
    model = import_model(folder / "model.py")(**model_args)
    optimizer = torch.optim.Adam(model.parameters())
    checkpoint = {
        "format": 1,
        "epoch": 2,
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "model_file": "model.py",
        "model_args": model_args,
        "layout": layout,
        "feature_names": feature_names,
        "labels": LABELS,
        "normalize": normalize,
        "pad_value": 0.0,
        "specs": specs.to_dict(),
        "dataset_state": {"epoch": 2, "batches": 0},
        "params": {"epochs": 2, "batch_size": 128, "normalize": normalize},
        "metrics": {"loss": np.float32(0.5), "auc": 0.75, "val_auc": float("nan")},
    }
    torch.save(checkpoint, folder / "checkpoint.pt")
    (folder / "checkpoints").mkdir()
    torch.save({**checkpoint, "epoch": 1}, folder / "checkpoints" / "epoch_001.pt")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return model.eval()
