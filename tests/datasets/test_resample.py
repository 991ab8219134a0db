"""Under- and oversampling: class counts within binomial errors of the requested ratio, kept
entries a subset of the selection (no entry twice unless oversampled) with the values uproot reads,
the same draw for any workers, ranks, chunk size or resume, counts in `report`, bad values
refused."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
import uproot

from rootml import RootIterableDataset
from rootml.errors import ConfigError, FileAccessError
from tests.datasets.test_sharding import resumed_pairs

SIZES = {"sig.root": (1, 3000), "bkg1.root": (0, 6000), "bkg2.root": (0, 6000)}  # 1:4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Signal (class 1) 3000 entries, background (class 0) 2 x 6000; "x" normal, "cls" 0/1/2 in
    a fourth file "mixed.root" (3000 entries) for label_branch."""
    folder = tmp_path_factory.mktemp("resample")
    rng = np.random.default_rng(3)
    paths = {}
    for name, (_, n) in SIZES.items():
        paths[name] = str(folder / name)
        with uproot.recreate(paths[name]) as out:
            out["Events"] = {"x": rng.standard_normal(n).astype(np.float32)}
    paths["mixed.root"] = str(folder / "mixed.root")
    with uproot.recreate(paths["mixed.root"]) as out:
        out["Events"] = {
            "x": rng.standard_normal(3000).astype(np.float32),
            "cls": rng.choice([0, 1, 2], 3000, p=[0.6, 0.3, 0.1]).astype(np.int32),
        }
    return paths


def make(files, **options):
    names = list(SIZES)
    labelled = {files[n]: SIZES[n][0] for n in names}
    kwargs = dict(branches=["x"], batch_size=512, chunk_size=1000, seed=7)
    return RootIterableDataset(labelled, **{**kwargs, **options})


def rows(ds, **loader):
    """(file, entry) pairs, labels and x of every row yielded."""
    pairs, labels, xs = [], [], []
    for batch in torch.utils.data.DataLoader(ds, batch_size=None, **loader):
        pairs += list(zip(batch["file"].tolist(), batch["entry"].tolist()))
        labels.append(batch["label"].numpy())
        xs.append(batch["features"][:, 0].numpy())
    return pairs, np.concatenate(labels), np.concatenate(xs)


def uproot_x(files):
    names = list(SIZES)
    return [uproot.open(files[n])["Events"]["x"].array(library="np") for n in names]


def test_undersampling_brings_the_classes_to_one_to_one(files):
    ds = make(files, resample="undersample", shuffle=True)
    assert ds.resampling.counts == {0: 12000, 1: 3000}
    pairs, labels, x = rows(ds)
    counts = collections.Counter(pairs)
    assert max(counts.values()) == 1  # no entry twice
    every = {(f, e) for f, n in enumerate(s[1] for s in SIZES.values()) for e in range(n)}
    assert set(counts) <= every
    # Signal whole; background kept with p = 3000/12000: binomial sd 47.4, allow 5 sd.
    assert (labels == 1).sum() == 3000 and {e for f, e in pairs if f == 0} == set(range(3000))
    n_bkg = int((labels == 0).sum())
    assert abs(n_bkg - 3000) < 5 * np.sqrt(12000 * 0.25 * 0.75), n_bkg
    assert ds.report == {"undersampled:0": 12000 - n_bkg}
    # Each row holds its own entry's values, as uproot reads them.
    read = uproot_x(files)
    expected = np.array([read[f][e] for f, e in pairs])
    np.testing.assert_array_equal(x, expected)
    # Kept per background file about alike (each 6000 x 0.25, sd 33.5).
    for f in (1, 2):
        assert abs(sum(1 for g, _ in pairs if g == f) - 1500) < 5 * np.sqrt(6000 * 0.25 * 0.75)


def test_undersampling_ratio_half(files):
    ds = make(files, resample="undersample", resample_ratio=0.5)
    _, labels, _ = rows(ds)
    # Background kept with p = 6000/12000: sd 54.8.
    assert abs((labels == 0).sum() - 6000) < 5 * np.sqrt(12000 * 0.25)
    assert (labels == 1).sum() == 3000


def kept(ds, **loader):
    return sorted(rows(ds, **loader)[0])


def test_the_same_entries_for_any_workers_ranks_chunks_and_shuffling(files):
    reference = kept(make(files, resample="undersample"))
    assert kept(make(files, resample="undersample", shuffle=True), num_workers=2) == reference
    assert kept(make(files, resample="undersample", chunk_size=333)) == reference
    ranks = []
    for rank in range(2):
        ds = make(files, resample="undersample", shuffle=True, rank=rank, world_size=2)
        ranks += kept(ds, num_workers=2)
    assert sorted(ranks) == reference


def test_each_epoch_draws_anew_and_set_epoch_repeats_it(files):
    ds = make(files, resample="undersample")
    first, second = kept(ds), kept(ds)
    assert first != second
    again = make(files, resample="undersample")
    again.set_epoch(1)
    assert kept(again) == second


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_gives_the_same_entries(files, num_workers):
    def dataset():
        return make(files, resample="oversample", resample_ratio=0.7, shuffle=True)

    whole = collections.Counter(kept(dataset(), num_workers=num_workers))
    assert collections.Counter(resumed_pairs(dataset, num_workers, 5)) == whole


def test_oversampling_repeats_each_minority_entry_k_or_k_plus_one_times(files):
    # ratio 0.7: signal to 0.7 x 12000 = 8400 entries, each entry 2.8 times on average.
    ds = make(files, resample="oversample", resample_ratio=0.7)
    assert ds.resampling.factors[1] == pytest.approx(2.8)
    pairs, labels, x = rows(ds)
    counts = collections.Counter(pairs)
    signal = np.array([counts[(0, e)] for e in range(3000)])
    assert set(signal) == {2, 3}
    # Each entry 3 times with p = 0.8: binomial sd 21.9.
    assert abs((signal == 3).sum() - 2400) < 5 * np.sqrt(3000 * 0.8 * 0.2)
    assert all(counts[(f, e)] == 1 for f in (1, 2) for e in range(6000))
    assert len(counts) == 15000 and (labels == 1).sum() == signal.sum()
    assert ds.report == {"oversampled:1": int(signal.sum()) - 3000}
    read = uproot_x(files)
    np.testing.assert_array_equal(x, np.array([read[f][e] for f, e in pairs]))


def test_oversampling_to_equal_counts(files):
    pairs, labels, _ = rows(make(files, resample="oversample"))
    counts = collections.Counter(pairs)
    assert all(counts[(0, e)] == 4 for e in range(3000))  # factor 12000 / 3000, exactly
    assert (labels == 1).sum() == (labels == 0).sum() == 12000


def test_label_branch_and_cut_are_counted_after_the_cut(files):
    ds = RootIterableDataset(
        files["mixed.root"], branches=["x"], label_branch="cls", cut="x > -0.5",
        resample="undersample", chunk_size=700, batch_size=256,
    )  # fmt: skip
    columns = uproot.open(files["mixed.root"])["Events"].arrays(["x", "cls"], library="np")
    passing = columns["cls"][columns["x"] > -0.5]
    expected = dict(zip(*np.unique(passing, return_counts=True)))
    assert ds.resampling.counts == {int(c): int(n) for c, n in expected.items()}
    pairs, labels, x = rows(ds)
    assert len(set(pairs)) == len(pairs) and (x > -0.5).all()
    smallest = min(expected.values())
    assert (labels == 2).sum() == expected[2] == smallest
    for c in (0, 1):  # kept with p = smallest / n_c
        p = smallest / expected[c]
        sd = np.sqrt(expected[c] * p * (1 - p))
        assert abs((labels == c).sum() - smallest) < 5 * sd
        assert ds.report[f"undersampled:{c}"] == expected[c] - (labels == c).sum()
    assert (labels == np.array([columns["cls"][e] for _, e in pairs])).all()


@pytest.mark.parametrize(
    "options, named",
    [
        ({"resample": "under"}, "resample"),
        ({"resample": "undersample", "resample_ratio": 0}, "resample_ratio"),
        ({"resample": "undersample", "resample_ratio": 1.5}, "resample_ratio"),
        ({"resample": "oversample", "resample_ratio": "half"}, "resample_ratio"),
        ({"resample_ratio": 0.5}, "resample_ratio"),
        ({"resample": "undersample", "resample_ratio": 0.2}, "resample_ratio"),  # data: 0.25
        ({"resample": "oversample", "balance": "class"}, "balance"),
    ],
)
def test_bad_values_are_refused(files, options, named):
    with pytest.raises(ConfigError, match=named):
        make(files, **options)


def test_one_class_is_refused(files):
    with pytest.raises(ConfigError, match="two classes"):
        RootIterableDataset(files["sig.root"], branches=["x"], resample="undersample")


def test_unreadable_label_branch_raises_or_is_skipped_in_the_counting_pass(files, tmp_path):
    columns = uproot.open(files["mixed.root"])["Events"].arrays(["x", "cls"], library="np")
    corrupt = tmp_path / "corrupt.root"
    with uproot.recreate(corrupt) as out:  # a TTree: one basket per branch
        out.mktree("Events", {"x": np.float32, "cls": np.int32}).extend(columns)
    seek = uproot.open(corrupt)["Events"]["cls"].member("fBasketSeek")[0]
    raw = bytearray(corrupt.read_bytes())
    raw[seek + 100 : seek + 400] = b"\x00" * 300  # inside the compressed basket payload
    corrupt.write_bytes(bytes(raw))
    both = [str(corrupt), files["mixed.root"]]
    options = dict(branches=["x"], label_branch="cls", resample="undersample")
    with pytest.raises(FileAccessError, match="corrupt.root"):
        RootIterableDataset(both, **options)
    ds = RootIterableDataset(both, on_error="skip", **options)
    cls = columns["cls"]
    assert ds.resampling.counts == {c: int((cls == c).sum()) for c in (0, 1, 2)}
    pairs, _, _ = rows(ds)
    assert {f for f, _ in pairs} == {1} and ds.report["skipped_entries"] == 3000
