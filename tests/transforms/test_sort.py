"""sort_by before truncation, padding and masks on the real files, against plain awkward."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import torch
import uproot

from rootml import RootIterableDataset
from rootml.errors import SchemaError
from rootml.transforms import SortBy, Specs, parse_sort_key
from tests.conftest import HZZ, RNTUPLE

PT = {"Jet_pt": "sqrt(Jet_Px**2 + Jet_Py**2)"}


def read_all(ds: RootIterableDataset) -> dict[str, np.ndarray]:
    batches = list(ds)
    return {key: torch.cat([b[key] for b in batches]).numpy() for key in batches[0]}


def padded(array: ak.Array, length: int, pad_value: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference padding with awkward alone: (n, length) float32 values and bool mask."""
    clipped = ak.pad_none(array, length, clip=True)
    mask = ~ak.to_numpy(ak.is_none(clipped, axis=1)).reshape(len(array), length)
    values = ak.to_numpy(ak.fill_none(clipped, pad_value)).astype(np.float32)
    return values.reshape(len(array), length), mask


def columns(names: list[str], branch: str) -> list[int]:
    return [i for i, name in enumerate(names) if name.startswith(f"{branch}[")]


@pytest.mark.parametrize("key", ["Jet_pt", "-Jet_pt", "+Jet_E", ("Jet_Py", True)])
def test_hzz_jets_sorted_then_truncated_equal_awkward(key) -> None:
    """Jets sorted by a key (an alias that is not a feature, or a feature), truncated to 2: the
    kept jets are the leading ones, every Jet branch reordered alike."""
    branches = ["Jet_Px", "Jet_Py", "Jet_E", "MET_px"]
    ds = RootIterableDataset(
        str(HZZ), branches=branches, aliases=PT, batch_size=700, chunk_size=500,
        max_len=2, pad_value=-9.0, sort_by={"Jet": key},
    )  # fmt: skip
    got = read_all(ds)
    arrays = uproot.open(HZZ)["events"].arrays([*branches, "Jet_pt"], aliases=PT)
    branch, ascending = parse_sort_key(key)
    order = ak.argsort(arrays[branch], ascending=ascending, stable=True)
    for name in ["Jet_Px", "Jet_Py", "Jet_E"]:
        values, mask = padded(arrays[name][order], 2, -9.0)
        cols = columns(ds.feature_names, name)
        np.testing.assert_array_equal(got["features"][:, cols], values)
        np.testing.assert_array_equal(got["mask"][:, cols], mask)
    np.testing.assert_array_equal(
        got["features"][:, ds.feature_names.index("MET_px")], arrays["MET_px"]
    )
    cut = int(ak.sum(np.maximum(ak.num(arrays["Jet_Px"]) - 2, 0)))
    assert ds.report["truncated:Jet_Px"] == cut > 0
    # The sort key's own values come out sorted, as ak.sort gives them.
    if branch in branches:
        values, _ = padded(ak.sort(arrays[branch], ascending=ascending), 2, -9.0)
        np.testing.assert_array_equal(got["features"][:, columns(ds.feature_names, branch)], values)


def test_rntuple_muons_sorted_by_pt_equal_awkward() -> None:
    ds = RootIterableDataset(
        str(RNTUPLE), branches=["Muon_pt", "Muon_eta", "Muon_charge"], batch_size=400,
        chunk_size=300, max_len=3, sort_by={"Muon": "Muon_pt"},
    )  # fmt: skip
    got = read_all(ds)
    arrays = uproot.open(RNTUPLE)["Events"].arrays(["Muon_pt", "Muon_eta", "Muon_charge"])
    order = ak.argsort(arrays["Muon_pt"], ascending=False)
    for name in ["Muon_pt", "Muon_eta", "Muon_charge"]:
        values, mask = padded(arrays[name][order], 3, 0.0)
        np.testing.assert_array_equal(got["features"][:, columns(ds.feature_names, name)], values)
        np.testing.assert_array_equal(got["mask"][:, columns(ds.feature_names, name)], mask)
    values, _ = padded(ak.sort(arrays["Muon_pt"], ascending=False), 3, 0.0)
    np.testing.assert_array_equal(got["features"][:, columns(ds.feature_names, "Muon_pt")], values)


def test_sort_by_counter_name_and_keys() -> None:
    specs = Specs.empty(
        {
            "Jet_pt": ("jagged", 1, "nJet"),
            "Jet_eta": ("jagged", 1, "nJet"),
            "Mu_pt": ("jagged", 1, "nMu"),
            "HT": ("flat", 1, None),
        },
        {},
    )
    sort = SortBy({"nJet": "+Jet_pt"}, specs)
    assert sort.groups == {"nJet": ("Jet_pt", True, ["Jet_pt", "Jet_eta"])}
    assert sort.keys == ["Jet_pt"]
    chunk = {
        "Jet_pt": ak.Array([[3.0, 1.0, 2.0], [], [5.0, 4.0]]),
        "Jet_eta": ak.Array([[0.3, 0.1, 0.2], [], [0.5, 0.4]]),
        "Mu_pt": ak.Array([[2.0, 1.0], [1.0], []]),
        "HT": np.array([1.0, 2.0, 3.0]),
    }
    out = sort(chunk)
    order = ak.argsort(chunk["Jet_pt"])
    for name in ("Jet_pt", "Jet_eta"):
        assert ak.to_list(out[name]) == ak.to_list(chunk[name][order])
    assert ak.to_list(out["Mu_pt"]) == ak.to_list(chunk["Mu_pt"])
    with pytest.raises(SchemaError, match="Photon"):
        SortBy({"Photon": "Photon_pt"}, specs)
    bad = dict(chunk, Jet_eta=ak.Array([[0.3], [], [0.5, 0.4]]))
    with pytest.raises(ValueError, match="Jet_eta"):
        sort(bad)


def test_sort_by_mismatch_in_dataset_names_the_file() -> None:
    """A key of another collection (Muon_E sorting Jet items) cannot reorder the jets."""
    ds = RootIterableDataset(
        str(HZZ), branches=["Jet_Px", "Muon_E"], max_len=2, sort_by={"Jet": "Muon_E"}
    )
    with pytest.raises(SchemaError, match="uproot-HZZ.root.*Muon_E"):
        read_all(ds)
