"""Kinematic reweighting: the per-class histograms fitted in the Specs pass are numpy's, parts
merge exactly, and the weighted pT (and pT-mass) distributions of the two classes agree: exactly
on the entries the histograms were fitted on, within statistical errors (chi2) on others."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from rootml import RootIterableDataset
from rootml.datasets import fit_specs
from rootml.errors import ConfigError, SchemaError
from rootml.transforms import Specs
from rootml.transforms.reweight import Reweighting

from ._generated import read

PT_EDGES = [20, 30, 40, 50, 60, 70, 80, 100, 120, 150, 1000]  # every bin well filled by both
MASS_EDGES = [0, 70, 80, 90, 100, 200]
FILE_WEIGHTS = [2.0, 0.5]
TRAIN, VAL = (0, 1500), (1500, 2000)


def reweighting(method="flat", reference=None, variables=None):
    variables = variables or {"pt": PT_EDGES}
    return Reweighting.from_params(variables, method, reference, 1e6)


def fitted(generated, reweight):
    files = [str(generated["a"]), str(generated["b"])]
    return files, fit_specs(files, "Events", ["x1", "pt", "mass"], entries=TRAIN, chunk_size=400,
                            reweight=reweight, labels=[1, 0], weights=FILE_WEIGHTS)  # fmt: skip


def weighted(files, specs, entries, branches=("pt",)):
    """(values of `branches`, label, weight) of every entry the dataset yields with reweight."""
    ds = RootIterableDataset(files, "Events", ["x1", "pt", "mass"], labels=[1, 0], specs=specs,
                             entries=entries, weights=FILE_WEIGHTS, reweight=True,
                             batch_size=700)  # fmt: skip
    rows = [dict(batch) for batch in ds]
    columns = {
        k: np.concatenate([r[k].numpy() for r in rows]) for k in ("features", "label", "weight")
    }
    index = [ds.feature_names.index(b) for b in branches]
    weight = columns["weight"].astype(np.float64)  # float32 in the batch; summed in float64
    return columns["features"][:, index].astype(np.float64), columns["label"], weight


def test_histograms_are_numpys_with_the_event_weights(generated):
    files, specs = fitted(generated, reweighting(variables={"pt": PT_EDGES, "mass": MASS_EDGES}))
    for path, label, weight in zip(files, (1, 0), FILE_WEIGHTS):
        columns = read(path, ["pt", "mass"])
        values = np.stack([columns["pt"][: TRAIN[1]], columns["mass"][: TRAIN[1]]], axis=1)
        # Values beyond the edges count in the edge bins.
        clipped = np.stack([np.clip(values[:, 0], 20, 999), np.clip(values[:, 1], 0, 199)], axis=1)
        expected, _ = np.histogramdd(clipped, bins=[PT_EDGES, MASS_EDGES])
        np.testing.assert_allclose(specs.reweight.hist[label], weight * expected)
    again = Specs.from_dict(specs.to_dict())
    np.testing.assert_array_equal(again.reweight.hist[0], specs.reweight.hist[0])
    assert again.reweight.variables == ["pt", "mass"] and again.reweight.edges[1] == MASS_EDGES


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 500, allow_nan=False), min_size=1, max_size=200),
    st.data(),
)
def test_parts_merge_into_the_whole(values, data):
    n = len(values)
    labels = np.asarray(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    weights = np.asarray(data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)), float)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    whole = reweighting()
    whole.update({"pt": np.asarray(values)}, labels, weights)
    merged = reweighting()
    for a, b in zip([0, *cuts], [*cuts, n]):
        part = reweighting()
        part.update({"pt": np.asarray(values[a:b])}, labels[a:b], weights[a:b])
        merged.merge(part)
    assert sorted(merged.hist) == sorted(whole.hist)
    for label in whole.hist:  # integer weights: sums are exact in any order
        np.testing.assert_array_equal(merged.hist[label], whole.hist[label])


def chi2_p(a_values, a_weights, b_values, b_weights, edges):
    """p-value of the chi2 test that two weighted histograms have the same shape (errors from
    the sums of squared weights). The weights' own statistical error (fitted on 1500 entries a
    class, against 500 here) is left out: it inflates chi2 by about a third, so p stays well
    above 0.01 for agreeing shapes (0.04-0.84 over eight generator seeds)."""
    a, _ = np.histogram(np.clip(a_values, edges[0], edges[-1] - 1e-9), edges, weights=a_weights)
    b, _ = np.histogram(np.clip(b_values, edges[0], edges[-1] - 1e-9), edges, weights=b_weights)
    a2, _ = np.histogram(np.clip(a_values, edges[0], edges[-1] - 1e-9), edges, weights=a_weights**2)
    b2, _ = np.histogram(np.clip(b_values, edges[0], edges[-1] - 1e-9), edges, weights=b_weights**2)
    keep = (a2 + b2) > 0
    statistic = np.sum(
        ((a / a.sum() - b / b.sum()) ** 2 / (a2 / a.sum() ** 2 + b2 / b.sum() ** 2))[keep]
    )
    return chi2.sf(statistic, keep.sum() - 1)


@pytest.mark.parametrize("method, reference", [("reference", 0), ("flat", None)])
def test_reweighted_pt_of_both_classes_agree(generated, method, reference):
    files, specs = fitted(generated, reweighting(method, reference))
    # On the entries the histograms come from, the weighted shapes are equal by construction.
    pt, label, weight = weighted(files, specs, [TRAIN, TRAIN])
    shapes = []
    for cls in (0, 1):
        counts, _ = np.histogram(
            np.clip(pt[label == cls, 0], 20, 999), PT_EDGES, weights=weight[label == cls]
        )
        shapes.append(counts / counts.sum())
    np.testing.assert_allclose(shapes[0], shapes[1], rtol=1e-5)
    # On entries not fitted on, they agree within statistical errors; unweighted they do not.
    pt, label, weight = weighted(files, specs, [VAL, VAL])
    sig, bkg = label == 1, label == 0
    assert chi2_p(pt[sig, 0], weight[sig], pt[bkg, 0], weight[bkg], PT_EDGES) > 0.01
    ones = np.ones(len(pt))
    assert chi2_p(pt[sig, 0], ones[sig], pt[bkg, 0], ones[bkg], PT_EDGES) < 1e-6
    if method == "reference":  # the reference class keeps its weights
        np.testing.assert_allclose(weight[bkg], FILE_WEIGHTS[1], rtol=1e-6)


def test_two_dimensional_flat_reweighting(generated):
    variables = {"pt": [20, 40, 70, 120, 1000], "mass": [0, 80, 90, 100, 200]}
    files, specs = fitted(generated, reweighting("flat", None, variables))
    values, label, weight = weighted(files, specs, [TRAIN, TRAIN], ("pt", "mass"))
    clipped = np.stack([np.clip(values[:, 0], 20, 999), np.clip(values[:, 1], 0, 199)], axis=1)
    for cls in (0, 1):
        counts, _ = np.histogramdd(
            clipped[label == cls], bins=list(variables.values()), weights=weight[label == cls]
        )
        filled = specs.reweight.hist[cls] > 0
        # Flat: the same weighted count in every bin the class fills.
        np.testing.assert_allclose(counts[filled], counts[filled].mean(), rtol=1e-5)


def test_bad_reweighting_is_refused(generated):
    with pytest.raises(ConfigError, match="increasing"):
        Reweighting.from_params({"pt": [10, 5]}, "flat", None, 10)
    with pytest.raises(ConfigError, match="needs reweight_reference"):
        Reweighting.from_params({"pt": [0, 5]}, "reference", None, 10)
    with pytest.raises(SchemaError, match="reweight variable 'ptt' is no branch"):
        fitted(generated, reweighting(variables={"ptt": [0, 1]}))
