"""UnitReader: the same columns as uproot with and without decompression threads."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from rootml.datasets._plan import Unit
from rootml.datasets._reader import UnitReader, read_threads
from tests.conftest import HZZ

NAMES = ["MET_px", "NJet", "Jet_Px", "Muon_E"]


@pytest.mark.parametrize("threads", [1, 3])
def test_columns_equal_uproot(threads):
    reader = UnitReader([str(HZZ)], "events", NAMES, threads=threads)
    try:
        columns, entries = reader.read(Unit(0, 100, 1300))
    finally:
        reader.close()
    want = uproot.open(HZZ)["events"].arrays(NAMES, entry_start=100, entry_stop=1300)
    np.testing.assert_array_equal(entries, np.arange(100, 1300))
    for name in NAMES:
        assert ak.to_list(columns[name]) == ak.to_list(want[name])
    assert reader.threads == threads


def test_default_threads_share_the_cores(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    alone = read_threads()
    assert 1 <= alone <= 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1000")
    assert read_threads() == 1
