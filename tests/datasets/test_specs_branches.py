"""A dataset given `specs=` and no `branches=` reads the Specs' branches (not every branch)."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from rootml import RootIterableDataset, Specs, SpecsMismatch, fit_specs
from tests.conftest import HZZ


def test_specs_alone_choose_the_branches(tmp_path) -> None:
    pads = {"MET_px": None, "Jet_Px": 3, "Muon_E": 2}
    max_len = {name: n for name, n in pads.items() if n is not None}
    fit_specs(str(HZZ), branches=list(pads), max_len=max_len).save(tmp_path / "specs.json")
    specs = Specs.load(tmp_path / "specs.json")
    ds = RootIterableDataset(str(HZZ), specs=specs, batch_size=10_000)
    assert sorted(ds.branch_info) == sorted(pads)  # not the file's other 48 branches
    assert ds.feature_names == specs.feature_names
    batch = next(iter(ds))
    arrays = uproot.open(HZZ)["events"].arrays(list(pads))
    expected = np.column_stack(
        [
            ak.to_numpy(arrays[name])
            if pads[name] is None
            else ak.to_numpy(ak.fill_none(ak.pad_none(arrays[name], pads[name], clip=True), 0.0))
            for name in ds.branch_info
        ]
    ).astype(np.float32)
    np.testing.assert_array_equal(batch["features"].numpy(), expected)


def test_specs_of_other_branches_are_still_refused() -> None:
    specs = fit_specs(str(HZZ), branches=["MET_px"])
    with pytest.raises(SpecsMismatch, match="branches"):
        RootIterableDataset(str(HZZ), branches=["MET_px", "MET_py"], specs=specs)
