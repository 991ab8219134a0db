"""`rootml predict --rntuple`: the scores as entry-aligned RNTuples, read back by uproot, equal
to onnxruntime on features built from uproot reads and to the TTree friends; inputs kept as
Parquet scored like their ROOT twin."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from rootml.cli import main
from rootml.predict.run import predict
from tests.serve._physics_model import (
    HZZ,
    HZZ_BRANCHES,
    HZZ_ZSTD,
    add_model,
    hzz_specs,
    read_columns,
    reference_inputs,
    run_onnx,
)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """A repository with a two-output model (score (B, 1), probs (B, 3)) of HZZ's branches."""
    path = tmp_path_factory.mktemp("rntuple-repo")
    specs = hzz_specs()
    onnx = add_model(path, "heads", specs, "standard", seed=3, two_heads=True)
    return path / "heads", specs, onnx


def test_rntuple_friends_equal_onnxruntime_and_the_ttree_friends(heads, tmp_path):
    model, specs, onnx = heads
    code = main(
        ["predict", "--model", str(model), "--files", str(HZZ), str(HZZ_ZSTD),
         "--out", str(tmp_path / "ntuples"), "--rntuple", "--batch-size", "500"]
    )  # fmt: skip
    assert code == 0
    columns = read_columns(HZZ, "events", HZZ_BRANCHES)
    want = run_onnx(onnx, reference_inputs(columns, specs.feature_names, columns, "standard"))
    predict(str(model), [str(HZZ)], str(tmp_path / "tree.root"), flush_entries=700, progress=False)
    tree = uproot.open(tmp_path / "tree.root")["events"].arrays(library="np")
    for name in ("uproot-HZZ_scores.root", "uproot-HZZ-zstd_scores.root"):
        ntuple = uproot.open(tmp_path / "ntuples" / name)["events"]
        assert "RNTuple" in type(ntuple).__name__ and ntuple.num_entries == 2421
        assert ntuple.typenames() == {"score": "float", "probs": "std::array<float,3>"}
        scores = ntuple.arrays()
        np.testing.assert_allclose(
            ak.to_numpy(scores.score), want["score"][:, 0], rtol=0, atol=1e-5
        )
        np.testing.assert_allclose(ak.to_numpy(scores.probs), want["probs"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(ak.to_numpy(scores.score), tree["score"])


def test_rntuple_clusters_follow_the_flushes_and_read_in_windows(heads, tmp_path):
    model, _, _ = heads
    out = tmp_path / "scores.root"
    predict(str(model), str(HZZ), str(out), flush_entries=1000, rntuple=True, progress=False)
    ntuple = uproot.open(out)["events"]
    starts = [int(c.num_first_entry) for c in ntuple.cluster_summaries]
    assert starts[0] == 0 and len(starts) >= 3  # 2421 entries flushed 1000 at a time
    whole = ak.to_numpy(ntuple["score"].array())
    window = ak.to_numpy(ntuple["score"].array(entry_start=1500, entry_stop=1600))
    np.testing.assert_array_equal(window, whole[1500:1600])


def test_parquet_inputs_are_scored_as_their_root_twin(heads, tmp_path):
    model, _, _ = heads
    arrays = uproot.open(HZZ)["events"].arrays(HZZ_BRANCHES)
    ak.to_parquet(arrays, tmp_path / "hzz.parquet", row_group_size=800)
    out = tmp_path / "out"
    summary = predict(str(model), str(tmp_path / "hzz.parquet"), str(out), progress=False)
    predict(str(model), str(HZZ), str(tmp_path / "twin.root"), progress=False)
    assert summary["entries"] == 2421
    friend = uproot.open(out / "hzz_scores.root")["Events"]  # a Parquet file has no tree name
    twin = uproot.open(tmp_path / "twin.root")["events"]
    np.testing.assert_array_equal(
        friend["probs"].array(library="np"), twin["probs"].array(library="np")
    )
