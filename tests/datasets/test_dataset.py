"""Batches equal direct uproot reads of the same entries: flat and jagged, TTree and RNTuple."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import torch
import uproot

from rootml import RootIterableDataset
from tests.conftest import DATA, HZZ, RNTUPLE


def collect(ds, **loader):
    """All batches of one epoch concatenated, ordered by (file, entry)."""
    batches = list(torch.utils.data.DataLoader(ds, batch_size=None, **loader))
    out = {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}
    order = np.lexsort((out["entry"], out["file"]))
    return {k: v[order] for k, v in out.items()}


def padded_reference(array, length, pad_value=0.0):
    """The padding contract with plain awkward: first `length` items, pad_value after."""
    clipped = ak.pad_none(array, length, clip=True)
    mask = ak.to_numpy(~ak.is_none(clipped, axis=1))
    return ak.to_numpy(ak.fill_none(clipped, pad_value)).astype(np.float32), mask


@pytest.mark.parametrize(
    "name",
    [
        "uproot-HZZ.root",
        "uproot-HZZ-lz4.root",
        "uproot-HZZ-lzma.root",
        "uproot-HZZ-zstd.root",
        "uproot-HZZ-uncompressed.root",
    ],
)
def test_ttree_values_equal_uproot(name):
    ds = RootIterableDataset(
        DATA / name,
        branches=["MET_px", "NJet", "Jet_*", "Muon_Px"],
        exclude=["Jet_ID"],
        batch_size=333,
        chunk_size=700,
    )
    got = collect(ds)
    tree = uproot.open(DATA / name)["events"]
    assert np.array_equal(got["entry"], np.arange(tree.num_entries))
    features = dict(zip(ds.feature_names, got["features"].T))
    masks = dict(zip(ds.feature_names, got["mask"].T))
    assert np.array_equal(features["MET_px"], tree["MET_px"].array(library="np"))
    assert np.array_equal(features["NJet"], tree["NJet"].array(library="np").astype(np.float32))
    for branch in ["Jet_Px", "Jet_E", "Jet_btag", "Muon_Px"]:
        array = tree[branch].array()
        length = int(ak.max(ak.num(array)))
        values, mask = padded_reference(array, length)
        columns = [f"{branch}[{i}]" for i in range(length)]
        assert [c for c in ds.feature_names if c.startswith(branch + "[")] == columns
        assert np.array_equal(np.stack([features[c] for c in columns], 1), values)
        assert np.array_equal(np.stack([masks[c] for c in columns], 1), mask)
    assert "Jet_ID[0]" not in ds.feature_names
    assert got["mask"][:, ds.feature_names.index("MET_px")].all()


def test_rntuple_values_equal_uproot():
    ds = RootIterableDataset(RNTUPLE, batch_size=100, chunk_size=300, max_len=4)
    got = collect(ds, num_workers=2)
    ntuple = uproot.open(RNTUPLE)["Events"]
    assert np.array_equal(got["entry"], np.arange(1000))
    for branch in ["Muon_pt", "Muon_charge"]:
        values, mask = padded_reference(ntuple[branch].array(), 4)
        start = ds.feature_names.index(f"{branch}[0]")
        assert np.array_equal(got["features"][:, start : start + 4], values)
        assert np.array_equal(got["mask"][:, start : start + 4], mask)
    truncated = int(ak.sum(np.maximum(ak.num(ntuple["Muon_pt"].array()) - 4, 0)))
    assert truncated > 0


def test_ttree_and_rntuple_with_the_same_content_give_identical_batches(tmp_path):
    arrays = uproot.open(HZZ)["events"].arrays(["MET_px", "NJet", "Jet_Px", "Jet_E"])
    columns = {
        "MET_px": arrays["MET_px"],
        "NJet": arrays["NJet"],
        "Jet_Px": arrays["Jet_Px"],
        "Jet_E": arrays["Jet_E"],
    }
    jets = ak.zip({"Px": columns["Jet_Px"], "E": columns["Jet_E"]})
    with uproot.recreate(tmp_path / "ttree.root") as out:
        out.mktree("events", {"MET_px": np.float32, "Jet": jets.type}).extend(
            {"MET_px": ak.to_numpy(columns["MET_px"]), "Jet": jets}
        )
    with uproot.recreate(tmp_path / "rntuple.root") as out:
        out.mkrntuple(
            "events",
            ak.Array(
                {
                    "MET_px": columns["MET_px"],
                    "nJet": columns["NJet"],
                    "Jet_Px": columns["Jet_Px"],
                    "Jet_E": columns["Jet_E"],
                }
            ),
        )
    kwargs = dict(batch_size=500, chunk_size=1000, shuffle=True, seed=3)
    assert "TTree" in uproot.open(tmp_path / "ttree.root").classnames().values()
    assert "ROOT::RNTuple" in uproot.open(tmp_path / "rntuple.root").classnames().values()
    tree = RootIterableDataset(
        tmp_path / "ttree.root", branches=["MET_px", "Jet_Px", "Jet_E"], **kwargs
    )
    ntuple = RootIterableDataset(
        tmp_path / "rntuple.root", branches=["MET_px", "Jet_Px", "Jet_E"], **kwargs
    )
    assert tree.feature_names == ntuple.feature_names
    for a, b in zip(iter(tree), iter(ntuple), strict=True):
        for key in ("features", "mask", "entry"):
            assert torch.equal(a[key], b[key])


def test_labels_weights_ids_nevts_and_cut(tmp_path):
    files = {str(HZZ): 1, str(DATA / "uproot-HZZ-zstd.root"): 0}
    ds = RootIterableDataset(
        files,
        branches=["MET_px"],
        identifiers=["NJet"],
        weights=[2.0, 0.5],
        weight_branch="EventWeight",
        cut="NMuon >= 1",
        nevts=3000,
        batch_size=128,
    )
    got = collect(ds)
    tree = uproot.open(HZZ)["events"]
    full = tree.arrays(["MET_px", "NJet", "NMuon", "EventWeight"], library="np")
    # nevts=3000 over two files of 2421 entries: 1500 each, the first entries of each file.
    for index, (label, factor) in enumerate([(1, 2.0), (0, 0.5)]):
        rows = got["file"] == index
        expected = np.flatnonzero(full["NMuon"][:1500] >= 1)
        assert np.array_equal(got["entry"][rows], expected)
        assert (got["label"][rows] == label).all()
        assert np.allclose(got["weight"][rows], factor * full["EventWeight"][expected])
        assert np.array_equal(got["ids"][rows, 0], full["NJet"][expected])
        assert np.array_equal(got["features"][rows, 0], full["MET_px"][expected])
    assert "NJet" not in ds.feature_names


def test_file_lists_globs_and_entry_ranges(tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text(f"# two files\n{HZZ}\n\n{DATA / 'uproot-HZZ-lz4.root'}  # lz4\n")
    ds = RootIterableDataset(str(listing), branches=["MET_px"], entries=(100, 200))
    assert ds.files == [str(HZZ), str(DATA / "uproot-HZZ-lz4.root")]
    got = collect(ds)
    assert np.array_equal(got["entry"], np.tile(np.arange(100, 200), 2))
    globbed = RootIterableDataset(str(DATA / "uproot-HZZ-*.root"), branches=["MET_px"])
    assert len(globbed.files) == 4 and globbed.num_entries == 4 * 2421
    redirected = RootIterableDataset.__new__(RootIterableDataset)
    from rootml.datasets._files import resolve_files

    urls, _ = resolve_files(["/store/mc/f.root", str(HZZ)], redirector="root://site.example")
    assert urls == ["root://site.example//store/mc/f.root", str(HZZ)]
    del redirected


def test_fixed_size_arrays_become_columns():
    path = DATA / "uproot-sample-6.20.04-uncompressed.root"
    ds = RootIterableDataset(path, branches=["af8", "Ai4", "i4"], batch_size=7)
    got = collect(ds)
    tree = uproot.open(path)["sample"]
    assert ds.feature_names[:3] == ["i4", "af8[0]", "af8[1]"] or "af8[0]" in ds.feature_names
    start = ds.feature_names.index("af8[0]")
    assert np.array_equal(
        got["features"][:, start : start + 3], tree["af8"].array(library="np").astype(np.float32)
    )
    values, mask = padded_reference(tree["Ai4"].array(), int(ak.max(ak.num(tree["Ai4"].array()))))
    start = ds.feature_names.index("Ai4[0]")
    assert np.array_equal(got["features"][:, start : start + values.shape[1]], values)
    assert np.array_equal(got["mask"][:, start : start + values.shape[1]], mask)
