"""Shared by the physics and predict tests: small models with Specs fitted on the test files, and
model inputs built independently of rootml from uproot reads with plain awkward and numpy."""

from __future__ import annotations

import io
import re
from pathlib import Path

import awkward as ak
import numpy as np
import onnxruntime as ort
import torch
import uproot

from rootml import fit_specs
from rootml.export.repository import add_onnx_model

DATA = Path(__file__).resolve().parents[1] / "data"
HZZ = DATA / "uproot-HZZ.root"
HZZ_ZSTD = DATA / "uproot-HZZ-zstd.root"
RNTUPLE = DATA / "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root"
# Flat floats, jagged floats of two collections, and a jagged int branch.
HZZ_BRANCHES = ["MET_px", "MET_py", "Jet_Px", "Jet_E", "Muon_Px", "Muon_Charge"]
HZZ_MAX_LEN = {"Jet": 3, "Muon": 2}
RNTUPLE_BRANCHES = ["nMuon", "Muon_pt", "Muon_eta"]


class MLP(torch.nn.Module):
    def __init__(self, n_features: int, seed: int, n_out: int):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, 8), torch.nn.Tanh(), torch.nn.Linear(8, n_out)
        )

    def forward(self, features, mask):
        return torch.sigmoid(self.net(features * mask.float()))


class TwoHeads(MLP):
    """Outputs "score" (B, 1) and "probs" (B, 3)."""

    def __init__(self, n_features: int, seed: int):
        super().__init__(n_features, seed, 4)

    def forward(self, features, mask):
        out = self.net(features * mask.float())
        return torch.sigmoid(out[:, :1]), torch.softmax(out[:, 1:], dim=1)


def onnx_bytes(n_features: int, seed: int = 0, two_heads: bool = False) -> bytes:
    """features FP32 [-1, F], mask BOOL [-1, F] -> score FP32 [-1, 1] (and probs [-1, 3])."""
    module = TwoHeads(n_features, seed) if two_heads else MLP(n_features, seed, 1)
    outputs = ["score", "probs"] if two_heads else ["score"]
    buffer = io.BytesIO()
    torch.onnx.export(
        module.eval(),
        (torch.randn(2, n_features), torch.ones(2, n_features, dtype=torch.bool)),
        buffer,
        input_names=["features", "mask"],
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in ["features", "mask", *outputs]},
        dynamo=False,
    )
    return buffer.getvalue()


def add_model(
    repo: Path,
    name: str,
    specs,
    method: str | None,
    folded: bool = False,
    seed: int = 0,
    two_heads: bool = False,
    max_batch_size: int = 1024,
    **extra,
) -> bytes:
    """Add a model with `specs` in its rootml.json; return its ONNX bytes."""
    model = onnx_bytes(len(specs.feature_names), seed, two_heads)
    metadata = {
        "layout": "flat",
        "specs": specs.to_dict(),
        "normalization": {"method": method, "folded": folded},
        "feature_names": specs.feature_names,
        "pad_value": 0.0,
        **extra,
    }
    add_onnx_model(repo, name, model, metadata, max_batch_size=max_batch_size)
    return model


def hzz_specs():
    return fit_specs(str(HZZ), "events", HZZ_BRANCHES, max_len=HZZ_MAX_LEN)


def rntuple_specs():
    return fit_specs(str(RNTUPLE), "Events", RNTUPLE_BRANCHES, max_len=3)


def read_columns(path: Path, tree: str, branches: list[str], start=None, stop=None) -> dict:
    """branch -> awkward array, straight from uproot."""
    return uproot.open(path)[tree].arrays(branches, entry_start=start, entry_stop=stop, how=dict)


def specs_statistics(specs: dict, method: str) -> dict[str, tuple[float, float]]:
    """branch -> (offset, scale) of `method` from the stored statistics of a Specs dict (as in a
    rootml.json): mean and sqrt(m2 / count), or min and max - min; numpy, float64."""
    out = {}
    for name, spec in specs["branches"].items():
        if method == "standard":
            out[name] = (spec["mean"], float(np.sqrt(spec["m2"] / spec["count"])))
        else:
            out[name] = (spec["min"], spec["max"] - spec["min"])
    return out


def reference_inputs(
    columns: dict,
    feature_names: list[str],
    stats_columns: dict | None,
    method: str | None,
    stats: dict[str, tuple[float, float]] | None = None,
) -> dict[str, np.ndarray]:
    """features (B, F) float32 and mask (B, F) bool in `feature_names` order, made with
    ak.pad_none/ak.fill_none and normalised with numpy statistics of `stats_columns` (every
    value of each branch, float64) or, when given, `stats` (branch -> (offset, scale)), padding
    left at 0."""
    features, masks = [], []
    for name in feature_names:
        match = re.fullmatch(r"(.+)\[(\d+)\]", name)
        if match is None:
            values = ak.to_numpy(columns[name]).astype(np.float64)
            mask = np.ones(len(values), dtype=bool)
            branch = name
        else:
            branch, i = match.group(1), int(match.group(2))
            padded = ak.fill_none(ak.pad_none(columns[branch], i + 1, clip=True), 0)
            values = ak.to_numpy(padded)[:, i].astype(np.float64)
            mask = ak.to_numpy(ak.num(columns[branch])) > i
        if method is not None and stats is not None:
            offset, scale = stats[branch]
        elif method is not None:
            every = np.asarray(ak.flatten(stats_columns[branch], axis=None), dtype=np.float64)
            if method == "standard":
                offset, scale = every.mean(), every.std()
            else:
                offset, scale = every.min(), every.max() - every.min()
        if method is not None:
            values = np.where(mask, (values - offset) / (scale or 1.0), 0.0)
        features.append(values)
        masks.append(mask)
    return {
        "features": np.stack(features, axis=1).astype(np.float32),
        "mask": np.stack(masks, axis=1),
    }


def sorted_jets(columns: dict, key: str = "Jet_E") -> dict:
    """`columns` with the jets of each entry in descending `key` order (plain awkward)."""
    order = ak.argsort(columns[key], axis=1, ascending=False, stable=True)
    return {n: v[order] if n.startswith("Jet_") else v for n, v in columns.items()}


def run_onnx(model: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))
