"""benchmarks/generate.py: files read back with uproot hold what the generator promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from tests.benchmarks import BENCH, load_script

SCRIPT = BENCH / "generate.py"
generate = load_script(SCRIPT)

CODECS = {"zlib": uproot.ZLIB(1), "lz4": uproot.LZ4(4), "zstd": uproot.ZSTD(5), "none": None}


def _read(path: Path) -> ak.Array:
    return uproot.open(path)["Events"].arrays()


def _assert_same_events(a: ak.Array, b: ak.Array) -> None:
    assert a.fields == b.fields
    for name in a.fields:
        assert ak.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("fmt", ["ttree", "rntuple"])
@pytest.mark.parametrize("compression", list(CODECS))
def test_written_file_reads_back(tmp_path, fmt, compression):
    path = tmp_path / "bkg.root"
    summary = generate.write_file(path, 3000, fmt=fmt, compression=compression, step=1000, seed=3)
    assert summary["events"] == 3000 and summary["bytes"] == path.stat().st_size
    assert not (tmp_path / "bkg.root.part").exists()

    file = uproot.open(path)
    events = file["Events"]
    expected_class = "TTree" if fmt == "ttree" else "ROOT::RNTuple"
    assert file.classname_of("Events") == expected_class
    assert file.file.compression == CODECS[compression]
    assert events.num_entries == 3000
    assert events.keys() == generate.branch_names()
    arrays = events.arrays()
    for collection, fields in generate.COLLECTIONS.items():
        counts = arrays["n" + collection]
        assert ak.to_numpy(counts).dtype == np.int32
        for field in fields:
            jagged = arrays[f"{collection}_{field}"]
            assert str(jagged.type) == "3000 * var * float32"
            assert ak.all(ak.num(jagged) == counts)
        if fmt == "ttree":
            assert events[f"{collection}_{fields[0]}"].count_branch.name == "n" + collection
    assert ak.to_numpy(arrays["run"]).dtype == np.uint32
    assert ak.to_numpy(arrays["event"]).dtype == np.uint64
    assert ak.to_numpy(arrays["PV_npvs"]).dtype == np.int32
    assert ak.to_numpy(arrays["MET_pt"]).dtype == np.float32
    # What was written is what the generator yields in memory for the same events.
    expected = generate.generate_events(0, 3000, seed=3)
    for name in generate.branch_names():
        assert ak.array_equal(arrays[name], ak.Array(expected[name])), name


def test_counters_and_names_follow_nanoaod():
    names = generate.branch_names()
    assert names[:3] == ["run", "luminosityBlock", "event"]
    assert names[-1] == "genWeight"
    assert [n for n in names if n.startswith("Jet_")] == [
        "Jet_pt",
        "Jet_eta",
        "Jet_phi",
        "Jet_mass",
        "Jet_btagDeepB",
    ]
    assert {c: len(f) for c, f in generate.COLLECTIONS.items()} == {
        "Electron": 3,
        "FatJet": 6,
        "Jet": 5,
        "Muon": 3,
    }
    assert len(generate.FLAT_BRANCHES) >= 20
    for collection in generate.COLLECTIONS:
        assert names.index("n" + collection) < names.index(collection + "_pt")


def test_same_seed_same_file_other_seed_other_file(tmp_path):
    generate.write_file(tmp_path / "a.root", 2000, kind="signal", seed=11, step=500)
    generate.write_file(tmp_path / "b.root", 2000, kind="signal", seed=11, step=500)
    generate.write_file(tmp_path / "c.root", 2000, kind="signal", seed=12, step=500)
    a, b, c = (_read(tmp_path / f"{x}.root") for x in "abc")
    _assert_same_events(a, b)
    assert not ak.array_equal(a["MET_pt"], c["MET_pt"])
    assert not ak.array_equal(a["nJet"], c["nJet"])
    # Identifiers depend on the entry only.
    assert ak.array_equal(a["event"], c["event"])


def test_stepwise_writing_equals_one_step(tmp_path):
    # 23 000 events cross two internal block boundaries; 7 000 is not a multiple of a block.
    n = 2 * generate.BLOCK + 3000
    generate.write_file(tmp_path / "one.root", n, step=n, seed=5, fmt="ttree")
    generate.write_file(tmp_path / "steps.root", n, step=7000, seed=5, fmt="ttree")
    generate.write_file(tmp_path / "steps_rn.root", n, step=7000, seed=5, fmt="rntuple")
    one = _read(tmp_path / "one.root")
    _assert_same_events(one, _read(tmp_path / "steps.root"))
    _assert_same_events(one, _read(tmp_path / "steps_rn.root"))
    pieces = list(generate.iter_steps(n, seed=5, step=7000))
    assert [len(p["run"]) for p in pieces] == [7000, 7000, 7000, 2000]


def test_a_range_equals_the_same_slice_of_a_longer_run():
    whole = generate.generate_events(0, 12_000, kind="signal", seed=2)
    part = generate.generate_events(9_000, 11_000, kind="signal", seed=2)
    for name in generate.branch_names():
        assert ak.array_equal(ak.Array(part[name]), ak.Array(whole[name])[9_000:11_000]), name


def test_identifiers_and_physical_ranges():
    events = generate.generate_events(0, 5000, seed=1)
    np.testing.assert_array_equal(events["run"], np.ones(5000))
    np.testing.assert_array_equal(events["event"], np.arange(1, 5001))
    assert np.all(np.diff(events["luminosityBlock"].astype(np.int64)) >= 0)
    jet_pt = events["Jet_pt"]
    assert ak.all(jet_pt >= 30.0)
    assert ak.all(ak.sort(jet_pt, ascending=False) == jet_pt)
    assert ak.all(abs(events["Jet_eta"]) <= 2.5)
    assert ak.all((events["Jet_btagDeepB"] >= 0) & (events["Jet_btagDeepB"] <= 1))
    assert ak.all(events["FatJet_pt"] >= 200.0)
    np.testing.assert_allclose(ak.to_numpy(ak.sum(jet_pt, axis=1)), events["HT"], rtol=1e-6)
    assert np.all(events["PV_npvsGood"] <= events["PV_npvs"])
    assert np.all(events["MET_pt"] >= 0)


def test_signal_and_background_differ_but_overlap():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    sig = generate.generate_events(0, 4000, kind="signal", seed=0)
    bkg = generate.generate_events(0, 4000, kind="background", seed=0)
    assert np.mean(sig["nJet"]) > np.mean(bkg["nJet"]) + 1.0
    assert np.mean(sig["HT"]) > 1.2 * np.mean(bkg["HT"])
    sig_btag = ak.mean(ak.flatten(sig["Jet_btagDeepB"]))
    assert sig_btag > 1.5 * ak.mean(ak.flatten(bkg["Jet_btagDeepB"]))
    # The weight must not give the label away.
    assert abs(np.mean(sig["genWeight"]) - np.mean(bkg["genWeight"])) < 0.05

    def features(events):
        flat = [np.asarray(events[name], np.float64) for name in generate.FLAT_BRANCHES]
        jets = ak.fill_none(ak.pad_none(events["Jet_btagDeepB"], 4, clip=True), -1.0)
        return np.column_stack([*flat, ak.to_numpy(jets)])

    x = StandardScaler().fit_transform(np.vstack([features(sig), features(bkg)]))
    y = np.r_[np.ones(4000), np.zeros(4000)]
    train = np.arange(8000) % 2 == 0
    clf = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    auc = roc_auc_score(y[~train], clf.predict_proba(x[~train])[:, 1])
    assert 0.7 < auc < 0.98


def test_empty_file_has_the_full_schema(tmp_path):
    generate.write_file(tmp_path / "empty.root", 0)
    events = uproot.open(tmp_path / "empty.root")["Events"]
    assert events.num_entries == 0
    assert events.keys() == generate.branch_names()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kind"):
        generate.generate_events(0, 10, kind="ttbar")
    with pytest.raises(ValueError, match="seed"):
        generate.generate_events(0, 10, seed=-1)
    with pytest.raises(ValueError, match="step"):
        next(generate.iter_steps(10, step=0))
    with pytest.raises(ValueError, match="compression"):
        generate.write_file("unused.root", 10, compression="lzma")
    with pytest.raises(ValueError, match="fmt"):
        generate.write_file("unused.root", 10, fmt="hdf5")


def test_command_line(tmp_path):
    out = tmp_path / "sig.root"
    command = [sys.executable, str(SCRIPT), str(out), "--events", "1500", "--kind", "signal"]
    command += ["--compression", "lz4", "--format", "rntuple", "--step", "400", "--seed", "9"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1500 signal events" in result.stdout and "events/s" in result.stdout
    file = uproot.open(out)
    assert file.file.compression == uproot.LZ4(4)
    arrays = file["Events"].arrays()
    expected = generate.generate_events(0, 1500, kind="signal", seed=9)
    assert ak.array_equal(arrays["Jet_pt"], expected["Jet_pt"])

    assert generate.main([str(tmp_path / "x.root"), "--events", "10", "--step", "0"]) == 2
    with pytest.raises(SystemExit) as exit_:
        generate.main(["--help"])
    assert exit_.value.code == 0


def test_tth_example_writes_files_labels_and_builds_the_seed_model(tmp_path):
    import json

    import torch

    example = SCRIPT.parents[1] / "examples" / "tth"
    written = load_script(example / "make_data.py").make_data(tmp_path / "data", events=500, seed=1)
    files = written["files"].read_text().split()
    labels = written["labels"].read_text().split()
    assert files == [str(written["signal"]), str(written["background"])]
    assert labels == ["1", "0"]
    signal = uproot.open(files[0])["Events"].arrays()
    assert len(signal) == 500
    expected = generate.generate_events(0, 500, kind="signal", seed=1)
    assert ak.array_equal(signal["nJet"], expected["nJet"])

    params = json.loads((example / "params.json").read_text())
    assert params["identifier"] == ["run", "luminosityBlock", "event"]
    assert set(params["exclude_branches"]) <= set(generate.branch_names())
    net = load_script(example / "model.py").model(7)
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(7, 128), (128, 64), (64, 1)]
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    net.eval()
    scores = net(torch.randn(16, 7))
    assert scores.shape == (16, 1) and bool(((scores >= 0) & (scores <= 1)).all())
