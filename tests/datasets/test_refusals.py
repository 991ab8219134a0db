"""No silent wrong answers: what cannot work is refused by name, at construction where it can be
known then; values that a batch cannot hold exactly are refused, never cast into other numbers.

Each case is checked against an independent read of the same file with uproot."""

from __future__ import annotations

import logging
import math
import re

import awkward as ak
import numpy as np
import pytest
import uproot

from rootml import (
    ConfigError,
    DataValueError,
    FileAccessError,
    RootIterableDataset,
    SchemaError,
    fit_specs,
)
from rootml.datasets import inspect_file
from rootml.datasets._plan import split_range
from tests.conftest import DATA, HZZ, RNTUPLE

OBJECTS = DATA / "HZZ-objects.root"  # std::vector<TLorentzVector>, TVector2, TVector3
STAFF = DATA / "ntpl001_staff_rntuple_v1-0-0-0.root"  # RNTuple with std::string fields
SPLIT = DATA / "uproot-small-evnt-tree-fullsplit.root"


def rows(ds) -> dict[str, np.ndarray]:
    batches = list(ds)
    return {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}


def write_tree(path, columns: dict, name: str = "events"):
    with uproot.recreate(path) as out:
        out.mktree(name, {k: v.dtype for k, v in columns.items()}).extend(columns)
    return path


# -- arguments that cannot work ----------------------------------------------------------------
@pytest.mark.parametrize(
    "argument, value",
    [
        ("chunk_size", 0),
        ("chunk_size", -5),
        ("chunk_size", 2.5),
        ("batch_size", 0),
        ("batch_size", -5),
        ("batch_size", True),
        ("max_len", 0),
        ("max_len", -3),
        ("max_len", 1.5),
        ("max_len", float("nan")),
        ("max_len", True),
        ("prefetch", 0),
        ("shuffle_buffer", -1),
        ("retries", -1),
        ("backoff", float("inf")),
        ("seed", -2),
        ("pad_value", float("nan")),
        ("nevts", 0),
        ("nevts", -7),
        ("nan_policy", "drop"),
        ("on_error", "ignore"),
        ("normalize", "zscore"),
        ("layout", "sets"),
    ],
)
def test_arguments_that_cannot_work_are_refused_naming_argument_and_value(argument, value):
    with pytest.raises(ConfigError, match=rf"{argument}.*{re.escape(repr(value))}") as err:
        RootIterableDataset(DATA / "no-such-file.root", **{argument: value})  # before any read
    assert isinstance(err.value, ValueError)  # what a caller of a bad argument catches


def test_per_branch_max_len_values_and_fit_specs_are_checked():
    with pytest.raises(ConfigError, match=r"max_len\['Jet'\].*0"):
        RootIterableDataset(HZZ, branches=["Jet_Px"], max_len={"Jet": 0})
    with pytest.raises(ConfigError, match="chunk_size.*0"):
        fit_specs(HZZ, branches=["MET_px"], chunk_size=0)
    with pytest.raises(ConfigError, match=r"max_len.*1\.5"):
        fit_specs(HZZ, branches=["Jet_Px"], max_len=1.5)
    with pytest.raises(ConfigError, match="chunk_size"):
        split_range(0, 10, 0)  # the planning function itself never loops on an empty step


def test_per_file_labels_weights_and_ranges_are_checked():
    with pytest.raises(ConfigError, match=r"labels.*0\.5"):
        RootIterableDataset([HZZ, HZZ], branches=["MET_px"], labels=[0.5, 1])
    with pytest.raises(ConfigError, match="weights.*nan"):
        RootIterableDataset(HZZ, branches=["MET_px"], weights=[float("nan")])
    with pytest.raises(ConfigError, match=r"entry range 0-99999 is outside 0-2421") as err:
        RootIterableDataset(HZZ, branches=["MET_px"], entries=(0, 99999))
    assert err.value.url == str(HZZ) and err.value.tree == "events"
    ds = RootIterableDataset([HZZ, HZZ], branches=["MET_px"], labels=[0, 1.0], nevts=10)
    assert rows(ds)["label"].tolist() == [0] * 5 + [1] * 5


# -- max_len keys ------------------------------------------------------------------------------
def test_max_len_keys_must_name_a_branch_or_collection():
    with pytest.raises(SchemaError, match=r"max_len key 'Jets'.*closest: \['Jet'") as err:
        RootIterableDataset(HZZ, branches=["Jet_Px", "Muon_Px"], max_len={"Jets": 3})
    assert err.value.url is None or err.value.url == str(HZZ)
    with pytest.raises(SchemaError, match="max_len key 'MET'"):  # MET_px is not jagged
        RootIterableDataset(HZZ, branches=["Jet_Px", "MET_px"], max_len={"MET": 3})
    ds = RootIterableDataset(
        HZZ, branches=["Jet_Px", "Muon_Px", "Muon_E"], max_len={"Jet": 3, "NMuon": 2, "Muon_E": 1}
    )
    assert ds.specs.pad == {"Jet_Px": 3, "Muon_Px": 2, "Muon_E": 1}


def test_max_len_keys_of_vectors_without_counter(tmp_path):
    """std::vector branches (TTree) and RNTuple fields carry their own counts: a key names the
    branch or the prefix of an ATLAS-style "Collection:variable" name."""
    with pytest.raises(SchemaError, match=r"max_len key 'jets'.*closest"):
        RootIterableDataset(OBJECTS, branches=["jetbtag"], max_len={"jets": 2})
    ds = RootIterableDataset(OBJECTS, branches=["jetbtag", "muoniso"], max_len={"jetbtag": 2})
    expected = uproot.open(OBJECTS)["events"]["muoniso"].array()
    assert ds.specs.pad == {"jetbtag": 2, "muoniso": int(ak.max(ak.num(expected)))}

    path = tmp_path / "physlite.root"
    jets = {"AnalysisJetsAuxDyn:pt": [[50.0, 40.0, 30.0, 20.0], [10.0]], "RunNumber": [1, 2]}
    jets["AnalysisJetsAuxDyn:eta"] = [[0.1, 0.2, 0.3, 0.4], [0.5]]
    with uproot.recreate(path) as out:
        out.mkrntuple("EventData", ak.Array(jets))
    with pytest.raises(
        SchemaError, match=r"max_len key 'AnalysisJets' .*closest: \['AnalysisJetsAuxDyn'"
    ):
        RootIterableDataset(path, max_len={"AnalysisJetsAuxDyn": 3, "AnalysisJets": 3})
    with pytest.raises(SchemaError, match=r"max_len key 'Jets' .*closest: \['AnalysisJetsAuxDyn'"):
        RootIterableDataset(path, max_len={"Jets": 3})
    ds = RootIterableDataset(path, max_len={"AnalysisJetsAuxDyn": 3})
    assert ds.specs.pad == {"AnalysisJetsAuxDyn:pt": 3, "AnalysisJetsAuxDyn:eta": 3}
    got = rows(ds)
    assert got["features"][0].tolist() == pytest.approx([50, 40, 30, 1, 0.1, 0.2, 0.3])
    assert got["mask"][1].tolist() == [True, False, False, True, True, False, False]


# -- cut, aliases, sort_by ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, pattern",
    [
        (dict(cut="MET_pxx > 0"), r"cut 'MET_pxx > 0' uses 'MET_pxx'.*closest: \['MET_px'"),
        (dict(cut="MET_px >"), r"cut 'MET_px >' does not parse"),
        (dict(aliases={"a": "Jet_Pxx * 2"}), r"alias 'a' 'Jet_Pxx \* 2' uses 'Jet_Pxx'"),
        (dict(aliases={"a": "b + 1", "b": "a * 2"}), "defined through themselves: a -> b -> a"),
        (dict(aliases={"MET_px": "MET_py * 2"}), "alias 'MET_px' has the name of a branch"),
        (dict(sort_by={"Jet": "Jet_PT"}), r"sort_by\['Jet'\]: key 'Jet_PT' is no branch"),
        (dict(sort_by={"Jet": "MET_py"}), r"key 'MET_py' is not a jagged branch"),
        (dict(sort_by={"Jets": "Jet_Px"}), r"no jagged branch in collection 'Jets'"),
    ],
)
def test_mistakes_in_expressions_are_refused_at_construction_even_with_skip(options, pattern):
    with pytest.raises(SchemaError, match=pattern) as err:
        RootIterableDataset(
            HZZ, branches=["Jet_Px", "MET_px"], max_len=2, on_error="skip", **options
        )
    assert err.value.url in (None, str(HZZ))


def test_expressions_on_rntuple_are_checked_too():
    with pytest.raises(SchemaError, match=r"cut 'nMuonn > 0' uses 'nMuonn'.*\['nMuon'") as err:
        RootIterableDataset(RNTUPLE, branches=["nMuon"], cut="nMuonn > 0", on_error="skip")
    assert (err.value.url, err.value.tree) == (str(RNTUPLE), "Events")


def test_a_cut_with_a_list_per_entry_is_an_error_not_skipped_data():
    ds = RootIterableDataset(HZZ, branches=["MET_px"], cut="Jet_Px > 0", on_error="skip")
    with pytest.raises(SchemaError, match="cut 'Jet_Px > 0' gives a list of values per entry"):
        list(ds)
    good = RootIterableDataset(HZZ, branches=["MET_px"], cut="NJet >= 2", on_error="skip")
    expected = uproot.open(HZZ)["events"]["NJet"].array(library="np") >= 2
    assert rows(good)["entry"].tolist() == np.flatnonzero(expected).tolist()


# -- types that are not numbers ----------------------------------------------------------------
def test_rntuple_strings_are_refused_not_read_as_character_codes(caplog):
    with pytest.raises(SchemaError, match=r"branch 'Nation'.*std::string") as err:
        RootIterableDataset(STAFF, branches=["Age", "Nation"])
    assert err.value.branch == "Nation"
    with caplog.at_level(logging.WARNING, logger="rootml"):
        ds = RootIterableDataset(STAFF, batch_size=5000)
    assert "Division" in caplog.text and "Nation" in caplog.text
    assert "Nation" not in ds.feature_names and "Division" not in ds.feature_names
    expected = uproot.open(STAFF)["Staff"].arrays(["Age", "Cost"], library="np")
    got = rows(ds)
    for name in ("Age", "Cost"):
        column = got["features"][:, ds.feature_names.index(name)]
        assert np.array_equal(column, expected[name].astype(np.float32))
    kinds = {b["name"]: b["kind"] for b in inspect_file(str(STAFF))["trees"][0]["branches"]}
    assert kinds["Nation"] == kinds["Division"] == "unsupported" and kinds["Age"] == "flat"


@pytest.mark.parametrize("name", ["jetp4", "MET", "MC_lepton"])
def test_object_branches_are_refused_by_name(name):
    with pytest.raises(SchemaError, match=rf"branch '{name}'.*cannot be turned into numbers"):
        RootIterableDataset(OBJECTS, branches=["jetbtag", name], max_len=2)


def test_object_branches_are_left_out_of_the_default_selection(caplog):
    with caplog.at_level(logging.WARNING, logger="rootml"):
        ds = RootIterableDataset(OBJECTS, max_len=2, batch_size=3000)
    objects = ["jetp4", "muonp4", "electronp4", "photonp4", "MET", "MC_bquarkhadronic"]
    for name in objects:
        assert name in caplog.text and not any(f.startswith(name) for f in ds.feature_names)
    got = rows(ds)
    tree = uproot.open(OBJECTS)["events"]
    btag = ak.fill_none(ak.pad_none(tree["jetbtag"].array(), 2, clip=True), 0.0)
    column = ds.feature_names.index("jetbtag[0]")
    assert np.array_equal(got["features"][:, column : column + 2], ak.to_numpy(btag))
    weight = tree["eventweight"].array(library="np")
    assert np.array_equal(got["features"][:, ds.feature_names.index("eventweight")], weight)


def test_split_object_sub_branches_are_named():
    with pytest.raises(
        SchemaError, match=r"branches: 'evt/I32' is a sub-branch of the split object 'evt'"
    ):
        RootIterableDataset(SPLIT, branches=["evt/I32"])
    with pytest.raises(
        SchemaError, match=r"label_branch: 'I32' is a sub-branch of the split object 'evt'"
    ):
        RootIterableDataset(SPLIT, label_branch="I32")


def test_inspect_shows_objects_counters_and_sizes():
    branches = {b["name"]: b for b in inspect_file(str(OBJECTS))["trees"][0]["branches"]}
    for name in ("jetp4", "MET", "MC_neutrino"):
        assert branches[name]["kind"] == "unsupported"
    assert branches["jetbtag"]["kind"] == "jagged" and branches["jetbtag"]["counter"] is None
    counted = {b["name"]: b for b in inspect_file(str(HZZ))["trees"][0]["branches"]}
    assert counted["Jet_Px"]["counter"] == "NJet"
    (evt,) = inspect_file(str(SPLIT))["trees"][0]["branches"]
    tree = uproot.open(SPLIT)["tree"]
    parts = [tree["evt"], *tree["evt"].itervalues(recursive=True)]
    assert evt["compressed_bytes"] == sum(b.compressed_bytes for b in parts) > 0
    assert evt["uncompressed_bytes"] == sum(b.uncompressed_bytes for b in parts) > 0


# -- labels, weights, identifiers --------------------------------------------------------------
def test_label_branch_values_are_exact_integers_or_refused(tmp_path):
    x = np.arange(6, dtype=np.float32)
    whole = write_tree(tmp_path / "whole.root", {"x": x, "y": np.array([0, 1, 1, 0, 2, 1.0])})
    ds = RootIterableDataset(whole, branches=["x"], label_branch="y")
    assert rows(ds)["label"].tolist() == [0, 1, 1, 0, 2, 1]
    flag = write_tree(tmp_path / "flag.root", {"x": x, "y": x > 2})
    assert rows(RootIterableDataset(flag, branches=["x"], label_branch="y"))["label"].tolist() == [
        0, 0, 0, 1, 1, 1
    ]  # fmt: skip
    for bad, shown in ((np.nan, "nan"), (0.5, "0.5")):
        path = write_tree(tmp_path / "bad.root", {"x": x, "y": np.array([0, 1, bad, 0, 1, 1])})
        with pytest.raises(DataValueError, match=rf"label_branch value {shown} at entry 2") as err:
            list(RootIterableDataset(path, branches=["x"], label_branch="y"))
        assert (err.value.branch, err.value.url, err.value.entries) == ("y", str(path), (0, 6))
    with pytest.raises(SchemaError, match=r"label_branch must hold one number per entry.*jagged"):
        RootIterableDataset(HZZ, branches=["MET_px"], label_branch="Jet_Px")


def test_weight_branch_nan_inf_negative_follow_nan_policy(tmp_path):
    w = np.array([1.0, np.nan, -2.0, np.inf, 3.0], dtype=np.float32)
    path = write_tree(tmp_path / "w.root", {"x": np.arange(5, dtype=np.float32), "w": w})
    kept = RootIterableDataset(path, branches=["x"], weight_branch="w")
    got = rows(kept)["weight"]
    assert np.array_equal(got, w, equal_nan=True)
    assert kept.report["nonfinite:w"] == 2 and kept.report["negative:w"] == 1
    masked = RootIterableDataset(path, branches=["x"], weight_branch="w", nan_policy="mask")
    assert rows(masked)["weight"].tolist() == [1.0, 0.0, 0.0, 0.0, 3.0]
    assert masked.report["nonfinite:w"] == 2 and masked.report["negative:w"] == 1
    refusing = RootIterableDataset(path, branches=["x"], weight_branch="w", nan_policy="raise")
    with pytest.raises(DataValueError, match="weight_branch has 2 NaN/inf and 1 negative") as err:
        list(refusing)
    assert err.value.branch == "w" and err.value.url == str(path)


def test_uint64_identifiers_are_exact_or_refused(tmp_path):
    big = np.array([1, 2**62 + 3, 2**63 - 1, 12345678901234567], dtype=np.uint64)
    x = np.arange(4, dtype=np.float32)
    path = write_tree(tmp_path / "ids.root", {"x": x, "event": big, "run": big.astype(np.int64)})
    got = rows(RootIterableDataset(path, branches=["x"], identifiers=["event", "run"]))["ids"]
    expected = uproot.open(path)["events"]["event"].array(library="np")
    assert got[:, 0].tolist() == expected.tolist() == got[:, 1].tolist()  # exact, not via float
    over = write_tree(
        tmp_path / "over.root", {"x": x, "event": np.array([7, 2**63 + 5, 3, 2**64 - 1], np.uint64)}
    )
    with pytest.raises(DataValueError, match=r"identifiers value 9223372036854775813 at entry 1"):
        list(RootIterableDataset(over, branches=["x"], identifiers=["event"]))
    staged = write_tree(tmp_path / "float.root", {"x": x, "event": np.array([1.0, 2.0, 2.5, 4.0])})
    with pytest.raises(DataValueError, match=r"identifiers value 2.5 at entry 2") as err:
        list(RootIterableDataset(staged, branches=["x"], identifiers=["event"]))
    assert err.value.branch == "event"


# -- errors carry their context as data --------------------------------------------------------
def test_errors_keep_url_tree_branch_entries_as_attributes(tmp_path):
    with pytest.raises(FileAccessError) as err:
        RootIterableDataset(tmp_path / "nope.root")
    assert err.value.url == str(tmp_path / "nope.root")
    with pytest.raises(SchemaError) as err:
        RootIterableDataset(HZZ, tree="Events")
    assert err.value.url == str(HZZ) and "no TTree or RNTuple named 'Events'" in err.value.message
    with pytest.raises(SchemaError) as err:
        RootIterableDataset(HZZ, branches=["Jet_PX"])
    assert (err.value.url, err.value.tree) == (str(HZZ), "events")
    assert str(err.value).startswith(f"in file {HZZ}, tree 'events': no branch matches")


def test_skip_records_which_file_failed(tmp_path):
    corrupt = tmp_path / "corrupt.root"
    data = bytearray(HZZ.read_bytes())
    start = uproot.open(HZZ)["events"]["Jet_Px"].member("fBasketSeek")[0]
    data[start + 100 : start + 400] = b"\x00" * 300
    corrupt.write_bytes(bytes(data))
    ds = RootIterableDataset([corrupt, HZZ], branches=["Jet_Px"], max_len=2, on_error="skip")
    assert len(rows(ds)["entry"]) == 2421
    assert ds.report[f"skipped:{corrupt}"] == 2421 and ds.report[f"skipped:{HZZ}"] == 0
    assert ds.report["skipped_entries"] == 2421
    assert math.isclose(ds.report["skipped_units"], 1)
