"""`rootml predict`: scores of every entry, entry-aligned friend trees and parquet, equal to
onnxruntime on features built independently from uproot reads (TTree and RNTuple, local model
and through the server)."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from rootml.cli import main
from rootml.errors import ModelError, ProtocolError, RootmlError
from rootml.predict.run import _InOrder, branch_names, output_paths, predict
from tests.serve._physics_model import (
    HZZ,
    HZZ_BRANCHES,
    HZZ_ZSTD,
    RNTUPLE,
    RNTUPLE_BRANCHES,
    read_columns,
    reference_inputs,
    run_onnx,
    sorted_jets,
)
from tests.serve.conftest import Server


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    srv = Server(repo[0], tmp_path_factory.mktemp("predict-log") / "serve.log")
    yield srv
    srv.stop()


def reference(repo, specs, model, path, tree, branches, method) -> dict[str, np.ndarray]:
    """onnxruntime's outputs on every entry of `path`, inputs made with awkward and numpy."""
    columns = read_columns(path, tree, branches)
    inputs = reference_inputs(columns, specs.feature_names, columns, method)
    return run_onnx(repo[1][model], inputs)


def test_local_ttree_friend_and_parquet(repo, specs, tmp_path):
    out_root, out_parquet = tmp_path / "hzz_scores.root", tmp_path / "hzz.parquet"
    summary = predict(
        str(repo[0] / "hzz"),
        [str(HZZ)],
        [str(out_root), str(out_parquet)],
        batch_size=300,
        chunk_size=700,
        flush_entries=1000,
        progress=False,
    )
    want = reference(repo, specs["hzz"], "hzz", HZZ, "events", HZZ_BRANCHES, "standard")["score"]
    events = uproot.open(HZZ)["events"]
    friend = uproot.open(out_root)["events"]
    assert summary["entries"] == friend.num_entries == events.num_entries == 2421
    assert summary["outputs"] == [str(out_root), str(out_parquet)]
    assert friend.keys() == ["score"]
    scores = friend["score"].array(library="np")
    assert scores.dtype == np.float32 and scores.shape == (2421,)
    np.testing.assert_allclose(scores, want[:, 0], rtol=0, atol=1e-5)
    # Read side by side over the same entry window, as a friend is used.
    window = friend.arrays(["score"], entry_start=1500, entry_stop=1600, library="np")["score"]
    np.testing.assert_array_equal(window, scores[1500:1600])
    assert len(events.arrays(["MET_px"], entry_start=1500, entry_stop=1600)) == len(window)
    table = ak.from_parquet(out_parquet)
    assert ak.fields(table) == ["file", "entry", "score"]
    assert set(ak.to_list(table.file)) == {str(HZZ)}
    np.testing.assert_array_equal(table.entry, np.arange(2421))
    np.testing.assert_array_equal(ak.to_numpy(table.score), scores)
    assert not list(tmp_path.glob("*.part"))


def test_sort_by_of_rootml_json(repo, specs, tmp_path):
    out = tmp_path / "sorted.root"
    predict(str(repo[0] / "sorted"), str(HZZ), str(out), progress=False)
    columns = sorted_jets(read_columns(HZZ, "events", HZZ_BRANCHES))
    inputs = reference_inputs(columns, specs["hzz"].feature_names, columns, None)
    want = run_onnx(repo[1]["sorted"], inputs)["score"]
    scores = uproot.open(out)["events"]["score"].array(library="np")
    np.testing.assert_allclose(scores, want[:, 0], rtol=0, atol=1e-5)


def test_local_rntuple(repo, specs, tmp_path):
    out = tmp_path / "muons.root"
    predict(str(repo[0] / "muons"), str(RNTUPLE), str(out), batch_size=256, progress=False)
    want = reference(
        repo, specs["muons"], "muons", RNTUPLE, "Events", RNTUPLE_BRANCHES, "standard"
    )["score"]
    friend = uproot.open(out)["Events"]
    assert friend.num_entries == uproot.open(RNTUPLE)["Events"].num_entries == 1000
    np.testing.assert_allclose(friend["score"].array(library="np"), want[:, 0], rtol=0, atol=1e-5)


def test_cli_through_the_server_several_inputs(server, repo, specs, tmp_path):
    """Two inputs -> a folder of friends plus one parquet; a model with two outputs."""
    folder, table_path = tmp_path / "friends", tmp_path / "all.parquet"
    code = main(
        [
            "predict",
            "--model",
            f"{server.url}/heads",
            "--files",
            str(HZZ),
            str(HZZ_ZSTD),
            "--out",
            str(folder),
            str(table_path),
            "--batch-size",
            "500",
            "--branch-name",
            "nn",
        ]
    )
    assert code == 0
    want = reference(repo, specs["hzz"], "heads", HZZ, "events", HZZ_BRANCHES, "minmax")
    table = ak.from_parquet(table_path)
    assert ak.fields(table) == ["file", "entry", "nn_score", "nn_probs"]
    assert ak.to_list(table.file[[0, 2420, 2421, -1]]) == [str(HZZ)] * 2 + [str(HZZ_ZSTD)] * 2
    np.testing.assert_array_equal(table.entry, np.concatenate([np.arange(2421)] * 2))
    for source in (HZZ, HZZ_ZSTD):
        friend = uproot.open(folder / f"{source.stem}_scores.root")["events"]
        assert friend.num_entries == 2421
        arrays = friend.arrays(library="np")
        assert arrays["nn_probs"].shape == (2421, 3)
        np.testing.assert_allclose(arrays["nn_score"], want["score"][:, 0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(arrays["nn_probs"], want["probs"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ak.to_numpy(table.nn_probs)[:2421], arrays["nn_probs"])


def test_server_equals_local(server, repo, tmp_path):
    remote, local = tmp_path / "remote.root", tmp_path / "local.root"
    predict(f"{server.url}/v2/models/muons", str(RNTUPLE), str(remote), progress=False)
    predict(str(repo[0] / "muons"), str(RNTUPLE), str(local), progress=False)
    np.testing.assert_array_equal(
        uproot.open(remote)["Events"]["score"].array(library="np"),
        uproot.open(local)["Events"]["score"].array(library="np"),
    )


def test_input_without_entries_gets_an_empty_friend(repo, tmp_path):
    with uproot.recreate(tmp_path / "empty.root") as out:
        out.mktree(
            "events",
            {
                "MET_px": np.float32,
                "MET_py": np.float32,
                "Jet_Px": "var * float32",
                "Jet_E": "var * float32",
                "Muon_Px": "var * float32",
                "Muon_Charge": "var * int32",
            },
        )
    summary = predict(
        str(repo[0] / "hzz"),
        [str(HZZ), str(tmp_path / "empty.root")],
        [str(tmp_path / "out"), str(tmp_path / "out.parquet")],
        progress=False,
    )
    assert summary["entries"] == 2421
    friend = uproot.open(tmp_path / "out" / "empty_scores.root")["events"]
    assert friend.num_entries == 0 and friend.keys() == ["score"]
    assert len(ak.from_parquet(tmp_path / "out.parquet")) == 2421


def test_rows_arriving_out_of_order_come_out_in_order():
    entries = [5, 0, 7]
    rows = [(f, e) for f, n in enumerate(entries) for e in range(n)]
    shuffled = np.random.default_rng(1).permutation(len(rows))
    order = _InOrder(entries, flush=3, urls=["a", "b", "c"], tree="t")
    chunks = []
    for batch in np.array_split(shuffled, 4):
        file = np.array([rows[i][0] for i in batch])
        entry = np.array([rows[i][1] for i in batch])
        chunks += list(order.add(file, entry, {"s": (file * 100 + entry).astype(np.float32)}))
    chunks += list(order.finish())
    assert all(len(c[2]["s"]) <= 3 for c in chunks)
    got = np.concatenate([c[2]["s"] for c in chunks])
    np.testing.assert_array_equal(got, [f * 100 + e for f, e in rows])
    assert [(c[0], c[1]) for c in chunks] == [(0, 0), (0, 3), (2, 0), (2, 3), (2, 6)]


def test_lost_entries_are_an_error():
    order = _InOrder([4], flush=10, urls=["a.root"], tree="t")
    list(order.add(np.array([0, 0]), np.array([0, 1]), {"s": np.zeros(2)}))
    list(order.add(np.array([0]), np.array([3]), {"s": np.zeros(1)}))
    with pytest.raises(RootmlError, match="in file a.root.*from entry 2 on"):
        list(order.finish())


def test_destinations_and_names():
    assert output_paths("x.root", ["in/a.root"]) == ([Path("x.root")], None)
    roots, parquet = output_paths(["d", "s.parquet"], ["in/a.root", "root://host//b.root"])
    assert roots == [Path("d/a_scores.root"), Path("d/b_scores.root")]
    assert parquet == Path("s.parquet")
    with pytest.raises(RootmlError, match="give a folder"):
        output_paths("x.root", ["a.root", "b.root"])
    with pytest.raises(RootmlError, match="share the names"):
        output_paths("d", ["x/a.root", "y/a.root"])
    with pytest.raises(RootmlError, match="is one of the inputs"):
        output_paths(str(HZZ), [str(HZZ)])
    assert branch_names(["score"]) == {"score": "score"}
    assert branch_names(["out"], "bdt") == {"out": "bdt"}
    assert branch_names(["a", "b"]) == {"a": "a", "b": "b"}


def test_bad_models(server, repo, tmp_path):
    out = str(tmp_path / "s.root")
    with pytest.raises(ModelError, match="no Specs"):
        predict(str(repo[0] / "plain"), str(HZZ), out, progress=False)
    with pytest.raises(ModelError, match="not a model folder"):
        predict(str(tmp_path / "nothing"), str(HZZ), out, progress=False)
    with pytest.raises(ProtocolError, match="unknown model"):
        predict(f"{server.url}/nothing", str(HZZ), out, progress=False)
    with pytest.raises(RootmlError, match="no branch matches .Muon_pt"):
        predict(str(repo[0] / "muons"), str(HZZ), out, progress=False)
    assert not list(tmp_path.iterdir())
