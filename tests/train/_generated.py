"""Small generated ROOT files with known answers, written with uproot.

Two files, "a.root" (class 1) and "b.root" (class 0), tree "Events", `entries` each:
- event: int64, unique over both files (file b continues after file a);
- x1, x2, x3: float32 standard normal inputs;
- pt: float32, exponential, slope 1/40 in a and 1/80 in b (shifted by 20): classes differ;
- mass: float32, normal(80 + 0.1 pt, 10): correlated with pt;
- y: float64, Y_TRUE(x1, x2, x3) + normal(0, SIGMA): a regression target of known resolution;
- y2: float64, 0.5 x1 x2 + normal(0, SIGMA2): a second target;
- score_hint: float32, class-dependent (signal shifted by +1), so a classifier can learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import uproot

SIGMA = 0.3
SIGMA2 = 0.2

MODEL = """import torch

def model(idim):
    return torch.nn.Sequential(torch.nn.Linear(idim, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 1), torch.nn.Sigmoid())
"""


def write_model(folder):
    path = folder / "model.py"
    path.write_text(MODEL)
    return path


def trained(run, epoch=1):
    """(file_index, entry) of every entry trained on in `epoch` (debug_entries)."""
    seen = np.load(run / "debug" / f"entries_epoch_{epoch:03d}.npz")
    return seen["file_index"], seen["entry"]


def y_true(x1, x2, x3):
    return 1.5 * x1 - 2.0 * x2 + 0.5 * x3 + 3.0


def make_files(folder: Path, entries: int = 2000, seed: int = 1) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    paths = {}
    for index, (name, label) in enumerate((("a", 1), ("b", 0))):
        x1, x2, x3 = (rng.standard_normal(entries).astype(np.float32) for _ in range(3))
        slope = 40.0 if label else 80.0
        pt = (20 + rng.exponential(slope, entries)).astype(np.float32)
        columns = {
            "event": np.arange(index * entries, (index + 1) * entries, dtype=np.int64),
            "x1": x1,
            "x2": x2,
            "x3": x3,
            "pt": pt,
            "mass": rng.normal(80 + 0.1 * pt, 10).astype(np.float32),
            "score_hint": (rng.standard_normal(entries) + label).astype(np.float32),
            "y": y_true(x1.astype(np.float64), x2, x3) + rng.normal(0, SIGMA, entries),
            "y2": 0.5 * x1.astype(np.float64) * x2 + rng.normal(0, SIGMA2, entries),
        }
        paths[name] = folder / f"{name}.root"
        with uproot.recreate(paths[name]) as out:
            out["Events"] = columns
    return paths


def read(path: Path, branches: list[str]) -> dict[str, np.ndarray]:
    with uproot.open(path) as file:
        return file["Events"].arrays(branches, library="np")


def standardised(run: Path, columns: dict[str, np.ndarray]) -> np.ndarray:
    """The flat features (one number per branch, in the run's feature order) standardised with
    the run's specs.json mean and std, in numpy float64 (as Normalize "standard" does), as
    float32."""
    import json

    saved = json.loads((run / "specs.json").read_text())
    specs, branches = saved["branches"], saved["feature_names"]
    x = np.stack([columns[b].astype(np.float64) for b in branches], axis=1)
    mean = np.array([specs[b]["mean"] for b in branches])
    std = np.sqrt(np.array([specs[b]["m2"] / specs[b]["count"] for b in branches]))
    return ((x - mean) / std).astype(np.float32)


def checkpoint_outputs(run: Path, checkpoint: Path, features: np.ndarray) -> np.ndarray:
    """The raw outputs (B, K) of the model of `run`'s model.py with `checkpoint`'s weights."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location(
        f"generated_model_{abs(hash(run))}", run / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = module.model(**state["model_args"])
    model.load_state_dict(state["model_state"])
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(features))
    return out.reshape(len(features), -1).numpy()
