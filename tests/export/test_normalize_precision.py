"""Normalisation of large-valued columns (a luminosity block near 2.27e6) equals the float64
(x - mean) / std rounded to float32, in all three places it is computed: the dataset (training),
the exported graph with the normalisation folded in (onnxruntime), and the server's raw-columns
path. The float32 mean alone is off by up to 0.125 there: 0.09 sigma of a column whose std is 1.4.
"""

from __future__ import annotations

import numpy as np
import pytest
import uproot

from rootml import RootIterableDataset, fit_specs
from rootml.export import export_run, load_model
from rootml.export.preprocessing import Preprocessing
from tests.export.test_onnx import make_run, run_onnx

IDENTITY_MODEL = """
import torch

class Identity(torch.nn.Module):
    def __init__(self, idim):
        super().__init__()
        self.one = torch.nn.Parameter(torch.ones(()))

    def forward(self, features):
        return features * self.one

def model(idim):
    return Identity(idim)
"""
BRANCHES = ["luminosityBlock", "x"]


@pytest.fixture(scope="module", params=[3.0, 1000.0], ids=["std-1", "std-1e3"])
def lumi(request, tmp_path_factory):
    """A file whose luminosityBlock (uint32, ~2.27e6, spread `param`) has a mean that float32
    cannot hold, its Specs, and the float64 reference of the normalised features."""
    rng = np.random.default_rng(7)
    n = 5003
    block = 2_270_000 + rng.integers(0, int(request.param), n).astype(np.uint32)
    columns = {"luminosityBlock": block, "x": rng.normal(50.0, 10.0, n).astype(np.float32)}
    path = tmp_path_factory.mktemp("lumi") / "lumi.root"
    with uproot.recreate(path) as out:
        out.mktree("Events", {k: v.dtype for k, v in columns.items()}).extend(columns)
    specs = fit_specs(str(path), branches=BRANCHES)
    read = uproot.open(path)["Events"].arrays(BRANCHES, library="np")
    reference = np.stack(
        [
            (read[b].astype(np.float64) - np.mean(read[b], dtype=np.float64))
            / np.std(read[b].astype(np.float64))
            for b in BRANCHES
        ],
        axis=1,
    ).astype(np.float32)
    mean = specs.branches["luminosityBlock"].mean
    assert abs(float(np.float32(mean)) - mean) > 1e-3  # the case: float32(mean) is not the mean
    return path, specs, read, reference


def assert_float32_exact(got: np.ndarray, reference: np.ndarray) -> None:
    """Within 2 ulp of the float64 result rounded to float32 (and 1e-6 near zero)."""
    error = np.abs(got.astype(np.float64) - reference)
    assert (error <= 2 * np.spacing(np.abs(reference)) + 1e-6).all(), error.max()


def test_dataset_normalisation_is_exact_to_float32(lumi):
    path, specs, _, reference = lumi
    ds = RootIterableDataset(path, branches=BRANCHES, specs=specs, normalize="standard")
    features = np.concatenate([b["features"].numpy() for b in ds])
    assert_float32_exact(features, reference)


def test_folded_graph_and_server_agree_with_the_dataset(lumi, tmp_path):
    path, specs, read, reference = lumi
    make_run(tmp_path / "run", IDENTITY_MODEL, specs)
    repo = tmp_path / "models"
    export_run(tmp_path / "run", repo, "folded", fold_normalization=True)
    export_run(tmp_path / "run", repo, "plain")
    raw = np.stack([read[b].astype(np.float32) for b in BRANCHES], axis=1)
    folded = run_onnx(
        load_model(repo, "folded").session, {"features": raw, "mask": np.ones(raw.shape, bool)}
    )
    assert_float32_exact(folded, reference)

    plain = load_model(repo, "plain")
    served = Preprocessing.from_metadata(plain.metadata, "plain").transform()(dict(read))
    assert_float32_exact(served["features"], reference)

    ds = RootIterableDataset(path, branches=BRANCHES, specs=specs, normalize="standard")
    trained = np.concatenate([b["features"].numpy() for b in ds])
    # Same float32 operations in numpy, torch->onnxruntime and the server: the same bits.
    assert np.array_equal(trained, folded) and np.array_equal(trained, served["features"])
