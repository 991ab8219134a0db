"""ArrayScorer: an exported model with its Specs applied to awkward arrays (plain, and the
partitions of dask-awkward's uproot.dask on a LocalCluster) gives `rootml predict`'s scores for
the same entries: one and two outputs, standard/minmax/no normalisation, sort_by, TTree and
RNTuple."""

from __future__ import annotations

import pickle

import awkward as ak
import dask_awkward as dak
import numpy as np
import pytest
import uproot

from rootml.errors import ModelError, SchemaError
from rootml.predict import ArrayScorer, predict
from tests.serve._physics_model import HZZ, HZZ_ZSTD, RNTUPLE


def friend_scores(repo, model, source, tree, tmp_path, **options) -> dict[str, np.ndarray]:
    """Branch -> scores of `rootml predict` for every entry of `source`."""
    out = tmp_path / f"{model}-{source.stem}.root"
    predict(str(repo[0] / model), str(source), str(out), progress=False, **options)
    return uproot.open(out)[tree].arrays(library="np")


@pytest.mark.parametrize(
    ("model", "source", "tree", "options"),
    [
        ("hzz", HZZ, "events", {}),
        ("heads", HZZ_ZSTD, "events", {"branch_name": "nn"}),
        ("sorted", HZZ, "events", {}),
        ("muons", RNTUPLE, "Events", {}),
    ],
)
def test_partitions_score_as_predict(repo, tmp_path, model, source, tree, options):
    """The entries in three partitions of different sizes, read by uproot, scored one by one."""
    scorer = ArrayScorer(str(repo[0] / model), batch_size=200, **options)
    want = friend_scores(repo, model, source, tree, tmp_path, **options)
    events = uproot.open(source)[tree]
    bounds = [0, 1, 333, events.num_entries]
    parts = [
        scorer(events.arrays(scorer.columns, entry_start=a, entry_stop=b))
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    got = ak.concatenate(parts)
    assert ak.fields(got) == list(want)
    for branch, scores in want.items():
        np.testing.assert_array_equal(ak.to_numpy(got[branch]), scores)


def test_dask_awkward_partitions_on_a_cluster(repo, tmp_path, dask_client):
    """uproot.dask over two files, map_partitions(scorer) computed by the LocalCluster's worker
    processes (the scorer travels pickled, without its model); only the Specs' branches are
    read; a model with two outputs, one of them a (B, 3) array."""
    scorer = ArrayScorer(str(repo[0] / "heads"))
    events = uproot.dask({str(HZZ): "events", str(HZZ_ZSTD): "events"}, step_size=700)
    assert events.npartitions == 8
    scores = dak.map_partitions(scorer, events)
    assert ak.fields(scores) == ["score", "probs"]
    (columns,) = dak.report_necessary_columns(scores).values()
    assert set(columns) == set(scorer.columns)
    got = scores.compute(scheduler=dask_client)
    want = friend_scores(repo, "heads", HZZ, "events", tmp_path)
    assert len(got) == 2 * 2421
    for branch in ("score", "probs"):
        np.testing.assert_array_equal(ak.to_numpy(got[branch]), np.concatenate([want[branch]] * 2))
    assert (
        got.type.content.fields == ["score", "probs"]
        and str(got.probs.type) == "4842 * 3 * float32"
    )


def test_missing_columns_and_bad_models(repo):
    scorer = ArrayScorer(str(repo[0] / "hzz"))
    assert pickle.loads(pickle.dumps(scorer)).columns == scorer.columns
    events = uproot.open(HZZ)["events"].arrays(["MET_px", "MET_py", "Jet_Px", "Jet_E"])
    with pytest.raises(SchemaError, match=r"needs the columns \['Muon_Px', 'Muon_Charge'\]"):
        scorer(events)
    with pytest.raises(ModelError, match="no Specs"):
        ArrayScorer(str(repo[0] / "plain"))
    empty = scorer(uproot.open(HZZ)["events"].arrays(scorer.columns, entry_stop=0))
    assert len(empty) == 0 and str(empty.type) == "0 * {score: float32}"
