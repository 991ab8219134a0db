"""UnitReader: the same columns as uproot with and without decompression threads."""

from __future__ import annotations

import zlib

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


def _rntuple(path, clusters: int, entries: int) -> list[str]:
    """An RNTuple of `clusters` clusters of `entries` entries (one per extend), a flat and a
    jagged field."""
    rng = np.random.default_rng(3)
    with uproot.recreate(path) as file:
        ntuple = None
        for _ in range(clusters):
            counts = rng.poisson(2.0, entries)
            data = {
                "x": rng.normal(size=entries).astype(np.float32),
                "Jet_pt": ak.unflatten(
                    rng.exponential(30.0, counts.sum()).astype(np.float32), counts
                ),
            }
            if ntuple is None:
                ntuple = file.mkrntuple(
                    "Events", {k: ak.Array(v).type.content for k, v in data.items()}
                )
            ntuple.extend(data)
    return ["x", "Jet_pt"]


@pytest.mark.parametrize("threads", [1, 2])
def test_rntuple_units_equal_uproot_and_each_cluster_is_decompressed_once(
    tmp_path, monkeypatch, threads
):
    path = tmp_path / "clusters.root"
    names = _rntuple(path, clusters=5, entries=300)
    ntuple = uproot.open(path)["Events"]
    assert [c.num_first_entry for c in ntuple.cluster_summaries] == [0, 300, 600, 900, 1200]
    want = ntuple.arrays(names, how=dict)
    calls = []
    inflate = zlib.decompress  # uproot's zlib (its default compression) calls zlib.decompress
    monkeypatch.setattr(zlib, "decompress", lambda *a, **k: calls.append(1) or inflate(*a, **k))
    reader = UnitReader([str(path)], "Events", names, threads=threads)
    try:
        for start in range(0, 1500, 300):
            columns, entries = reader.read(Unit(0, start, start + 300))
            np.testing.assert_array_equal(entries, np.arange(start, start + 300))
            for name in names:
                assert ak.to_list(columns[name]) == ak.to_list(want[name][start : start + 300])
        per_unit = len(calls) / 5
        # uproot alone decompresses the next cluster too (entry_stop at a cluster's start):
        calls.clear()
        for start in range(0, 1500, 300):
            ntuple.arrays(names, entry_start=start, entry_stop=start + 300, array_cache=None)
        assert per_unit < len(calls) / 5
        # Memory: the pages of about two reads, never the file's.
        pages = reader.tree_of(0)._pages
        assert pages._bytes <= pages._limit
    finally:
        reader.close()
