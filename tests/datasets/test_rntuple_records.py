"""RNTuple collections of records (uproot's `{"Jet": ak.zip({...})}`, ROOT's std::vector<LV>):
their fields are jagged branches "Jet.pt" of the collection "Jet", and give the batches of the
equivalent TTree (Jet_pt with counter nJet) written from the same arrays."""

from __future__ import annotations

import logging

import awkward as ak
import numpy as np
import pytest
import torch
import uproot

from rootml import RootIterableDataset
from rootml.datasets import fit_specs
from rootml.datasets.contents import format_report, inspect_file
from rootml.errors import SchemaError
from tests.conftest import DATA, HZZ

ROOT_LV = DATA / "test_int_vfloat_tlv_vtlv_rntuple_v1-0-0-0.root"
NESTED = DATA / "test_nested_structs_rntuple_v1-0-0-0.root"
NANOAOD = DATA / "cmsopendata2015_ttbar_19980_NANOAOD_RNTupleImporter_rntuple_v1-0-0-1.root"


def events() -> dict:
    """HZZ's MET and jets as uproot writes them: a collection of records "Jet"."""
    a = uproot.open(HZZ)["events"].arrays(["MET_px", "Jet_Px", "Jet_Py", "Jet_E"])
    jets = ak.zip({"Px": a.Jet_Px, "Py": a.Jet_Py, "E": a.Jet_E})
    return {"Jet": jets, "MET_px": a.MET_px}  # uproot's RNTuple writer sorts fields by name


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """(TTree file, RNTuple file) written by uproot from the same arrays: the TTree holds
    nJet, Jet_Px, Jet_Py, Jet_E; the RNTuple Jet.Px, Jet.Py, Jet.E."""
    folder = tmp_path_factory.mktemp("twins")
    with uproot.recreate(folder / "ttree.root") as out:
        out.mktree("Events", {"Jet": events()["Jet"].type.content, "MET_px": "float32"})
        out["Events"].extend(events())
    with uproot.recreate(folder / "rntuple.root") as out:
        out["Events"] = events()
    return folder / "ttree.root", folder / "rntuple.root"


def test_the_twins_are_what_uproot_writes(twins):
    ttree, rntuple = twins
    assert set(uproot.open(ttree)["Events"].keys()) == {
        "MET_px",
        "nJet",
        "Jet_Px",
        "Jet_Py",
        "Jet_E",
    }
    ntuple = uproot.open(rntuple)["Events"]
    assert "RNTuple" in type(ntuple).__name__
    assert ntuple.keys() == ["Jet", "Jet.Px", "Jet.Py", "Jet.E", "MET_px"]


def features(ds):
    return [torch.cat([b[k] for b in ds]) for k in ("features", "mask", "entry")]


@pytest.mark.parametrize("max_len", [4, {"Jet": 3}, 0.9, None])
def test_record_fields_give_the_batches_of_the_ttree_twin(twins, max_len):
    ttree, rntuple = twins
    kwargs = dict(batch_size=300, chunk_size=700, max_len=max_len)
    flat = RootIterableDataset(ttree, branches=["MET_px", "Jet_P*", "Jet_E"], **kwargs)
    records = RootIterableDataset(rntuple, branches=["MET_px", "Jet.*"], **kwargs)
    assert records.feature_names == [n.replace("Jet_", "Jet.") for n in flat.feature_names]
    for a, b in zip(features(flat), features(records)):
        assert torch.equal(a, b)
    if max_len == 4:  # and both equal awkward's own padding of uproot's read
        jets = uproot.open(rntuple)["Events"].arrays()["Jet"]
        padded = ak.to_numpy(ak.fill_none(ak.pad_none(jets.Py, 4, clip=True), 0.0))
        columns = [records.feature_names.index(f"Jet.Py[{i}]") for i in range(4)]
        assert np.array_equal(features(records)[0][:, columns].numpy(), padded.astype(np.float32))


def test_collection_sort_by_specs_and_layout_name_the_collection(twins):
    ttree, rntuple = twins
    common = dict(batch_size=500, max_len={"Jet": 3}, layout="collection")
    flat = RootIterableDataset(ttree, branches=["Jet_*"], sort_by={"Jet": "+Jet_Py"}, **common)
    records = RootIterableDataset(rntuple, branches=["Jet.*"], sort_by={"Jet": "+Jet.Py"}, **common)
    a, b = next(iter(flat)), next(iter(records))
    assert b["Jet"].shape == (500, 3, 3) and torch.equal(a["Jet"], b["Jet"])
    assert torch.equal(a["Jet_mask"], b["Jet_mask"])
    # ascending Py, independently: awkward's sort of uproot's read
    py = uproot.open(rntuple)["Events"]["Jet.Py"].array(entry_stop=500)
    first = ak.to_numpy(ak.fill_none(ak.firsts(ak.sort(py, axis=1)), 0.0))
    assert np.array_equal(b["Jet"][:, 1, 0].numpy(), first.astype(np.float32))
    specs = fit_specs(str(rntuple), branches=["Jet.*"], max_len={"Jet": 0.95})
    counts = ak.num(uproot.open(rntuple)["Events"]["Jet.Px"].array())
    assert specs.branches["Jet.E"].collection == "Jet"
    assert specs.branches["Jet.E"].multiplicity == np.bincount(counts).tolist()
    assert (
        specs.pad["Jet.Px"]
        == specs.pad["Jet.E"]
        == int(np.quantile(counts, 0.95, method="inverted_cdf"))
    )


def test_cut_and_aliases_use_record_fields(twins):
    _, rntuple = twins
    ds = RootIterableDataset(
        rntuple, branches=["MET_px", "PT"], aliases={"PT": "hypot(Jet.Px, get('Jet.Py'))"},
        cut="abs(MET_px) < 20", max_len={"PT": 2}, batch_size=5000,
    )  # fmt: skip
    batch = next(iter(ds))
    a = uproot.open(rntuple)["Events"].arrays()
    keep = ak.to_numpy(abs(a.MET_px) < 20)
    assert torch.equal(batch["entry"], torch.from_numpy(np.flatnonzero(keep)))
    pt = np.hypot(a.Jet.Px, a.Jet.Py)[keep]
    expected = ak.to_numpy(ak.fill_none(ak.pad_none(pt, 2, clip=True), 0.0)).astype(np.float32)
    columns = [ds.feature_names.index(f"PT[{i}]") for i in range(2)]
    assert np.array_equal(batch["features"][:, columns].numpy(), expected)


def test_unknown_record_fields_are_refused_with_the_closest(twins):
    _, rntuple = twins
    with pytest.raises(SchemaError, match=r"no branch matches 'Jet.pz'; closest: \[.*'Jet.Px'"):
        RootIterableDataset(rntuple, branches=["Jet.pz"])
    with pytest.raises(SchemaError, match="Jet.Pz"):
        RootIterableDataset(rntuple, branches=["MET_px"], cut="Jet.Pz > 0")


def test_root_written_vector_of_structs_equals_uproot():
    ds = RootIterableDataset(ROOT_LV, batch_size=10, max_len={"four_v_LVs": 8})
    assert ds.feature_names[:9] == ["one_integers", *[f"two_v_floats[{i}]" for i in range(4)],
                                    "three_LV.pt", "three_LV.eta", "three_LV.phi", "three_LV.mass"]  # fmt: skip
    batch = next(iter(ds))
    a = uproot.open(ROOT_LV)["ntuple"].arrays()
    for field in ("pt", "mass"):
        columns = [ds.feature_names.index(f"four_v_LVs.{field}[{i}]") for i in range(8)]
        padded = ak.pad_none(a.four_v_LVs[field], 8, clip=True)
        assert np.array_equal(
            batch["features"][:, columns].numpy(), ak.to_numpy(ak.fill_none(padded, 0.0))
        )
        assert np.array_equal(
            batch["mask"][:, columns].numpy(), ak.to_numpy(~ak.is_none(padded, axis=1))
        )
        flat = batch["features"][:, ds.feature_names.index(f"three_LV.{field}")]
        assert np.array_equal(flat.numpy(), ak.to_numpy(a.three_LV[field]))


def test_nested_records_and_lists_of_lists_are_refused_by_name(tmp_path, caplog):
    path = tmp_path / "deep.root"
    jets = ak.zip({"pt": ak.Array([[1.0, 2.0], [], [3.0]]), "hits": ak.Array([[[1], [2, 3]], [], [[4]]])}, depth_limit=2)  # fmt: skip
    with uproot.recreate(path) as out:
        out["Events"] = {
            "x": np.arange(3.0),
            "Jet": jets,
            "vv": ak.Array([[[1.0]], [], [[2.0, 3.0]]]),
        }
    with caplog.at_level(logging.WARNING):
        ds = RootIterableDataset(path)
    assert ds.feature_names == ["Jet.pt[0]", "Jet.pt[1]", "x"]
    warned = caplog.text
    assert "Jet.hits" in warned and "vv (std::vector<std::vector<double>>)" in warned
    for name in ("Jet.hits", "vv"):
        with pytest.raises(
            SchemaError,
            match=rf"branch '{name}'.*cannot be turned into numbers; pass exclude=\['{name}'\]",
        ):
            RootIterableDataset(path, branches=[name])
    with pytest.raises(SchemaError, match="my_struct.sub_struct"):
        RootIterableDataset(NESTED, branches=["my_struct.sub_struct"])
    assert RootIterableDataset(NESTED).feature_names == ["my_struct.i"]


def test_importer_internal_collections_never_reach_users(caplog):
    with caplog.at_level(logging.WARNING):
        ds = RootIterableDataset(NANOAOD, batch_size=10, max_len=2)
    assert "_collection" not in caplog.text
    assert not [n for n in ds.feature_names if n.startswith("_")]
    names = [b["name"] for b in inspect_file(str(NANOAOD))["trees"][0]["branches"]]
    assert "Jet_pt" in names and not [n for n in names if n.startswith("_")]
    batch = next(iter(ds))
    pt = uproot.open(NANOAOD)["Events"]["Jet_pt"].array()
    column = ds.feature_names.index("Jet_pt[1]")
    expected = ak.to_numpy(ak.fill_none(ak.pad_none(pt, 2, clip=True), 0.0))[:, 1]
    assert np.array_equal(batch["features"][:, column].numpy(), expected)


def test_inspect_shows_the_collection_and_its_fields(twins):
    report = inspect_file(str(twins[1]))
    rows = {b["name"]: b for b in report["trees"][0]["branches"]}
    assert rows["Jet"]["kind"] == "collection"
    assert rows["Jet"]["fields"] == ["Jet.Px", "Jet.Py", "Jet.E"]
    assert (rows["Jet.Py"]["kind"], rows["Jet.Py"]["collection"]) == ("jagged", "Jet")
    text = format_report(report)
    assert "Jet.Px" in text and "[Jet.Px, Jet.Py, Jet.E]" in text
