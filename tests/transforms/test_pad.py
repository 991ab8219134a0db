"""Padding and the flat layout against awkward's own ak.pad_none / ak.fill_none."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest

from rootml.transforms.layout import FlatLayout, make_columns
from rootml.transforms.pad import PadIndex, jagged_offsets, jagged_parts, pad_jagged


def _expected(array: ak.Array, max_len: int, pad_value: float) -> tuple[np.ndarray, np.ndarray]:
    padded = ak.pad_none(array, max_len, clip=True)
    mask = ~ak.to_numpy(ak.is_none(padded, axis=1))
    values = ak.to_numpy(ak.fill_none(padded, pad_value)).astype(np.float32)
    return values.reshape(len(array), max_len), mask.reshape(len(array), max_len)


def _random_jagged(rng: np.random.Generator, n: int, mean: float, dtype=np.float32) -> ak.Array:
    counts = rng.poisson(mean, n)
    return ak.unflatten(rng.normal(size=int(counts.sum())).astype(dtype), counts)


@pytest.mark.parametrize("max_len", [0, 1, 3, 12, 600])  # 600: masks per entry, no table
@pytest.mark.parametrize("pad_value", [0.0, -999.0, np.nan])
def test_pad_jagged_equals_awkward(max_len: int, pad_value: float) -> None:
    rng = np.random.default_rng(max_len)
    array = _random_jagged(rng, 500, 4.0 if max_len < 600 else 500.0)
    values, mask, cut = pad_jagged(array, max_len, pad_value)
    want_values, want_mask = _expected(array, max_len, pad_value)
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_array_equal(values, want_values)  # NaN == NaN here
    assert values.dtype == np.float32 and mask.dtype == bool
    assert cut == int(ak.sum(ak.num(array)) - mask.sum())


def test_pad_sliced_and_listarray_inputs() -> None:
    """Offsets that do not start at 0 (a slice of a chunk) and ListArray layouts."""
    rng = np.random.default_rng(1)
    array = _random_jagged(rng, 300, 3.0)[37:211]
    layout = ak.to_layout(array)
    assert np.asarray(layout.offsets)[0] != 0
    as_list = ak.Array(
        ak.contents.ListArray(
            ak.index.Index64(np.asarray(layout.starts)),
            ak.index.Index64(np.asarray(layout.stops)),
            layout.content,
        )
    )
    for candidate in (array, as_list):
        offsets, content = jagged_offsets(candidate)
        assert offsets[0] == 0 and len(offsets) == len(array) + 1
        counts, _ = jagged_parts(candidate)
        np.testing.assert_array_equal(counts, ak.to_numpy(ak.num(array)))
        values, mask, _ = pad_jagged(candidate, 5, -1.0)
        want_values, want_mask = _expected(array, 5, -1.0)
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(mask, want_mask)


def test_pad_rejects_non_jagged() -> None:
    with pytest.raises(TypeError):
        pad_jagged(ak.Array([1.0, 2.0]), 3)


def test_pad_index_matches_only_equal_offsets() -> None:
    offsets = np.array([0, 2, 2, 5], dtype=np.int64)
    index = PadIndex(offsets, 2)
    assert index.matches(offsets.copy(), 2)
    assert not index.matches(offsets, 3)
    assert not index.matches(np.array([0, 1, 3, 5], dtype=np.int64), 2)


def test_flat_layout_equals_per_branch_awkward() -> None:
    """Fields sharing offsets (one collection), a field with other offsets, a collection split by
    a flat column, two widths on the same offsets, int contents and flat int/float columns."""
    rng = np.random.default_rng(7)
    n = 1000
    counts = rng.poisson(3.0, n)
    total = int(counts.sum())
    chunk = {
        "nJet": counts.astype(np.int32),
        "Jet_pt": ak.unflatten(rng.exponential(40.0, total).astype(np.float32), counts),
        "Jet_eta": ak.unflatten(rng.normal(size=total).astype(np.float32), counts),
        "HT": rng.exponential(300.0, n),
        "Jet_id": ak.unflatten(rng.integers(0, 7, total).astype(np.int32), counts),
        "Jet_phi": ak.unflatten(rng.uniform(-3, 3, total), counts),
        "Muon_pt": _random_jagged(rng, n, 1.0),
    }
    widths = {"Jet_pt": 4, "Jet_eta": 4, "Jet_id": 4, "Jet_phi": 2, "Muon_pt": 3}
    spec = [(b, "jagged" if b in widths else "flat", widths.get(b, 1)) for b in chunk]
    layout = FlatLayout(make_columns(spec), pad_value=-5.0)
    out = layout(chunk)
    parts, masks = [], []
    for branch, kind, width in spec:
        if kind == "flat":
            parts.append(np.asarray(chunk[branch], dtype=np.float32)[:, None])
            masks.append(np.ones((n, 1), dtype=bool))
        else:
            values, mask = _expected(chunk[branch], width, -5.0)
            parts.append(values)
            masks.append(mask)
    np.testing.assert_array_equal(out["features"], np.concatenate(parts, axis=1))
    np.testing.assert_array_equal(out["mask"], np.concatenate(masks, axis=1))
    cut_jets = int((counts - np.minimum(counts, 4)).sum())
    assert out["stats"]["truncated"]["Jet_pt"] == cut_jets
    assert out["stats"]["truncated"]["Jet_phi"] == int((counts - np.minimum(counts, 2)).sum())
    assert len(layout.feature_names) == out["features"].shape[1]


def test_flat_layout_empty_chunk() -> None:
    chunk = {"HT": np.zeros(0), "Jet_pt": ak.Array([[1.0]])[:0]}
    layout = FlatLayout(make_columns([("HT", "flat", 1), ("Jet_pt", "jagged", 2)]))
    out = layout(chunk)
    assert out["features"].shape == (0, 3) and out["mask"].shape == (0, 3)


def test_flat_layout_reuses_only_arrays_no_one_holds() -> None:
    """Output arrays are made from earlier ones only when nothing refers to those any more: a
    block (or a view of it, or a torch tensor made from one) kept by the caller is never
    overwritten by later chunks."""
    import torch

    rng = np.random.default_rng(5)
    n = 40_000  # large enough to be kept for reuse
    layout = FlatLayout(make_columns([("HT", "flat", 1), ("Jet_pt", "jagged", 60)]))

    def chunk() -> dict:
        return {"HT": rng.normal(size=n), "Jet_pt": _random_jagged(rng, n, 30.0)}

    first_chunk = chunk()
    first = layout(first_chunk)
    view = torch.from_numpy(first["features"][10:20])
    copies = {k: first[k].copy() for k in ("features", "mask")}
    base = first["features"]
    del first
    second_chunk = chunk()
    second = layout(second_chunk)
    assert second["features"] is not base  # the first is still referred to (by `view`)
    earlier = {id(base), id(second["features"])}  # alive: the layout keeps them for reuse
    np.testing.assert_array_equal(view.numpy(), copies["features"][10:20])
    np.testing.assert_array_equal(base, copies["features"])
    del view, base, second
    third = layout(chunk())  # nothing holds the earlier arrays now: one is reused ...
    again = layout(second_chunk)  # ... and values are those of its own chunk
    want_values, want_mask = _expected(second_chunk["Jet_pt"], 60, 0.0)
    np.testing.assert_array_equal(again["features"][:, 1:], want_values)
    np.testing.assert_array_equal(again["mask"][:, 1:], want_mask)
    np.testing.assert_array_equal(again["features"][:, 0], second_chunk["HT"].astype(np.float32))
    assert again["mask"][:, 0].all() and third["features"] is not again["features"]
    assert {id(third["features"]), id(again["features"])} <= earlier
    layout.release()
    assert layout(chunk())["features"] is not again["features"]
