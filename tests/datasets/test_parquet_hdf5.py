"""Parquet and HDF5 inputs: batches equal pyarrow's and h5py's own reads (padded here with
numpy), every entry exactly once over workers, ranks and shuffling, resume mid-epoch, row groups
and chunks as work units, nulls counted, unknown names and missing extras refused."""

from __future__ import annotations

import collections
import sys

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import uproot

from rootml import RootIterableDataset
from rootml.datasets.contents import inspect_file
from rootml.errors import ConfigError, FileAccessError, SchemaError
from tests.conftest import HZZ
from tests.datasets.test_sharding import resumed_pairs, seen

h5py = pytest.importorskip("h5py")
PARTS = (slice(0, 1300), slice(1300, None))
SIZES = [1300, 1121]


def hzz(part):
    return uproot.open(HZZ)["events"].arrays(["MET_px", "NJet", "Jet_Px", "Jet_Py"])[part]


@pytest.fixture(scope="module")
def parquet_files(tmp_path_factory):
    """HZZ in two Parquet files of row groups of 300: flat columns, and jets as a list of
    records ("Jet.Px"), written by awkward."""
    folder = tmp_path_factory.mktemp("parquet")
    paths = []
    for i, part in enumerate(PARTS):
        a = hzz(part)
        table = {
            "MET_px": a.MET_px,
            "NJet": a.NJet,
            "Jet": ak.zip({"Px": a.Jet_Px, "Py": a.Jet_Py}),
        }
        paths.append(folder / f"part{i}.parquet")
        ak.to_parquet(ak.zip(table, depth_limit=1), paths[-1], row_group_size=300)
    return paths


@pytest.fixture(scope="module")
def hdf5_files(tmp_path_factory):
    """HZZ in two HDF5 files, chunks of 250 entries: MET (N,), a fixed (N, 4) and the first 3
    jets as particles (N, 3, 2) (Px, Py; zero after the last jet), as the jet-tagging benchmark
    files keep them."""
    folder = tmp_path_factory.mktemp("hdf5")
    paths = []
    for i, part in enumerate(PARTS):
        a = hzz(part)
        n = len(a)
        jets = np.zeros((n, 3, 2), dtype=np.float32)
        for c, field in enumerate(("Jet_Px", "Jet_Py")):
            jets[:, :, c] = ak.to_numpy(ak.fill_none(ak.pad_none(a[field], 3, clip=True), 0.0))
        paths.append(folder / f"part{i}.h5")
        with h5py.File(paths[-1], "w") as out:
            out.create_dataset("MET_px", data=ak.to_numpy(a.MET_px), chunks=(250,))
            out.create_dataset(
                "moments", data=np.arange(n * 4.0).reshape(n, 4) + 1000 * i, chunks=(250, 4)
            )
            out.create_dataset("jets", data=jets, chunks=(250, 3, 2), compression="gzip")
            out.create_dataset("names", data=np.array([b"Px", b"Py"]))  # not entries: left out
    return paths


def padded(values, offsets, length):
    """Pad one-level lists (numpy offsets and values) to `length` with 0, and their mask."""
    counts = np.diff(offsets)
    mask = np.arange(length) < np.minimum(counts, length)[:, None]
    out = np.zeros((len(counts), length), dtype=np.float32)
    rows, cols = np.nonzero(mask)
    out[rows, cols] = values[offsets[:-1][rows] + cols]
    return out, mask


def pyarrow_features(path, length=3):
    """The expected features of a Parquet file from pyarrow alone: MET_px, NJet, Jet.Px[0..2],
    Jet.Py[0..2] and the mask."""
    table = pq.read_table(path)
    jets = table.column("Jet").combine_chunks()
    offsets = np.asarray(jets.offsets)
    columns, masks = [], []
    for name in ("MET_px", "NJet"):
        columns.append(table.column(name).to_numpy()[:, None].astype(np.float32))
        masks.append(np.ones_like(columns[-1], dtype=bool))
    for field in ("Px", "Py"):
        values, mask = padded(jets.values.field(field).to_numpy(), offsets, length)
        columns.append(values)
        masks.append(mask)
    return np.concatenate(columns, axis=1), np.concatenate(masks, axis=1)


def h5py_features(path):
    with h5py.File(path) as f:
        jets = f["jets"][:]
        columns = [f["MET_px"][:][:, None], jets[:, :, 0], jets[:, :, 1], f["moments"][:]]
    return np.concatenate(columns, axis=1).astype(np.float32)


def test_parquet_values_equal_pyarrow(parquet_files):
    ds = RootIterableDataset(parquet_files, batch_size=700, chunk_size=500, max_len=3)
    assert ds.feature_names == [
        "MET_px",
        "NJet",
        *(f"Jet.P{c}[{i}]" for c in "xy" for i in range(3)),
    ]
    # units end on row groups of 300: 300 entries each (500 is not a multiple), the last shorter
    assert ds._units[:2] == [(0, 0, 300), (0, 300, 600)]
    batches = list(ds)
    features = torch.cat([b["features"] for b in batches]).numpy()
    mask = torch.cat([b["mask"] for b in batches]).numpy()
    expected = [pyarrow_features(p) for p in parquet_files]
    assert np.array_equal(features, np.concatenate([e[0] for e in expected]))
    assert np.array_equal(mask, np.concatenate([e[1] for e in expected]))
    assert torch.equal(
        torch.cat([b["entry"] for b in batches]), torch.cat([torch.arange(n) for n in SIZES])
    )


def test_hdf5_values_equal_h5py(hdf5_files):
    ds = RootIterableDataset(hdf5_files, batch_size=600, chunk_size=600)
    assert ds.feature_names == [  # datasets in h5py's order: by name
        "MET_px", *(f"jets.{c}[{i}]" for c in "01" for i in range(3)), *(f"moments[{i}]" for i in range(4))
    ]  # fmt: skip
    assert ds._units[:2] == [(0, 0, 500), (0, 500, 1000)]  # on chunk edges (250)
    features = torch.cat([b["features"] for b in ds]).numpy()
    assert np.array_equal(features, np.concatenate([h5py_features(p) for p in hdf5_files]))
    collection = RootIterableDataset(hdf5_files[0], batch_size=100, layout="collection")
    batch = next(iter(collection))
    with h5py.File(hdf5_files[0]) as f:
        jets = f["jets"][:100]
    assert batch["jets"].shape == (100, 2, 3) and bool(batch["jets_mask"].all())
    assert np.array_equal(batch["jets"].numpy(), jets.transpose(0, 2, 1))
    assert collection.feature_names == ["MET_px", *(f"moments[{i}]" for i in range(4))]


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_entry_exactly_once(fmt, parquet_files, hdf5_files, num_workers, world_size, shuffle):
    files = parquet_files if fmt == "parquet" else hdf5_files
    pairs = []
    for rank in range(world_size):
        ds = RootIterableDataset(
            files, branches=["MET_px"], batch_size=97, chunk_size=250, shuffle=shuffle, seed=5,
            rank=rank, world_size=world_size, shuffle_buffer=300,
        )  # fmt: skip
        pairs += seen(ds, num_workers=num_workers)
    expected = [(f, e) for f, n in enumerate(SIZES) for e in range(n)]
    assert collections.Counter(pairs) == collections.Counter(expected)


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_resume_mid_epoch_is_exactly_once(fmt, parquet_files, hdf5_files):
    files = parquet_files if fmt == "parquet" else hdf5_files

    def make():
        return RootIterableDataset(
            files, branches=["MET_px"], batch_size=100, chunk_size=250, shuffle=True, seed=2
        )

    pairs = resumed_pairs(make, num_workers=2, stop_after=9)
    assert sorted(pairs) == [(f, e) for f, n in enumerate(SIZES) for e in range(n)]


def test_parquet_cut_aliases_folders_and_mixing_with_root(parquet_files, tmp_path):
    ds = RootIterableDataset(
        parquet_files[0].parent, branches=["MET_px", "PT"], cut="NJet >= 2",
        aliases={"PT": "hypot(Jet.Px, Jet.Py)"}, max_len={"PT": 2}, batch_size=5000,
    )  # fmt: skip
    assert ds.files == [str(p) for p in parquet_files]  # the folder's files, sorted
    a = hzz(slice(None))
    keep = ak.to_numpy(a.NJet >= 2)
    features = torch.cat([b["features"] for b in ds]).numpy()
    pt = ak.to_numpy(
        ak.fill_none(ak.pad_none(np.hypot(a.Jet_Px, a.Jet_Py)[keep], 2, clip=True), 0.0)
    )
    assert np.array_equal(features[:, 1:], pt.astype(np.float32))
    # an alias defined through another alias
    twice = RootIterableDataset(
        parquet_files,
        branches=["M3"],
        aliases={"M2": "MET_px * 2", "M3": "M2 + 1"},
        batch_size=5000,
    )
    assert np.array_equal(
        torch.cat([b["features"] for b in twice])[:, 0].numpy(), ak.to_numpy(a.MET_px * 2 + 1)
    )
    # Parquet next to ROOT in one dataset: the same values from either
    mixed = RootIterableDataset(
        {str(HZZ): 1, str(parquet_files[0]): 0}, branches=["MET_px"], batch_size=5000
    )
    batch = next(iter(mixed))
    values = batch["features"][:, 0].numpy()
    assert np.array_equal(
        values[batch["file"].numpy() == 1], values[batch["file"].numpy() == 0][:1300]
    )
    assert batch["label"].tolist() == [1] * 2421 + [0] * 1300


def test_parquet_nulls_are_nan_or_empty_lists_and_counted(tmp_path):
    path = tmp_path / "nulls.parquet"
    table = pa.table({"x": pa.array([1.5, None, 3.0], pa.float32()),
                      "v": pa.array([[1, 2], None, [3]], pa.list_(pa.int32())),
                      "i": pa.array([4, 5, 6], pa.int16()),
                      "__index_level_0__": pa.array([7, 3, 9])})  # pandas' index: not a feature  # fmt: skip
    pq.write_table(table, path, row_group_size=2)
    ds = RootIterableDataset(path, max_len=2, batch_size=10)
    batch = next(iter(ds))
    assert ds.feature_names == ["x", "v[0]", "v[1]", "i"]
    f, m = batch["features"].numpy(), batch["mask"].numpy()
    assert np.array_equal(f[[0, 2], 0], [1.5, 3.0]) and np.isnan(f[1, 0])
    assert m[1].tolist() == [True, False, False, True]  # a missing list: no items
    assert f[:, 3].tolist() == [4, 5, 6] and ds.report["nonfinite:x"] == 1


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_unknown_names_are_refused(fmt, parquet_files, hdf5_files):
    files = parquet_files if fmt == "parquet" else hdf5_files
    with pytest.raises(
        SchemaError, match=r"no branch matches 'MET_pz'; closest: \['MET_px'\]"
    ) as err:
        RootIterableDataset(files, branches=["MET_pz"])
    assert err.value.url == str(files[0])
    with pytest.raises(SchemaError, match="MET_pz"):
        RootIterableDataset(files, branches=["MET_px"], cut="MET_pz > 0")


def test_hdf5_groups_strings_and_compound_datasets(tmp_path):
    path = tmp_path / "groups.h5"
    table = np.zeros(5, dtype=[("pt", "f4"), ("p4", "f8", (4,)), ("tag", "S3")])
    table["pt"] = np.arange(5)
    table["p4"] = np.arange(20.0).reshape(5, 4)
    with h5py.File(path, "w") as out:
        out.create_dataset("a/table", data=table)
        out.create_dataset("b/x", data=np.arange(7))
    with pytest.raises(SchemaError, match=r"several groups \['/a', '/b'\]; pass tree=GROUP"):
        RootIterableDataset(path)
    ds = RootIterableDataset(path, tree="a", batch_size=10)
    assert ds.feature_names == ["table.pt", *(f"table.p4[{i}]" for i in range(4))]
    batch = next(iter(ds))
    assert np.array_equal(batch["features"].numpy(), np.column_stack([table["pt"], table["p4"]]))
    with pytest.raises(SchemaError, match="table.tag"):
        RootIterableDataset(path, tree="a", branches=["table.tag"])
    groups = [t["name"] for t in inspect_file(str(path))["trees"]]
    assert groups == ["/a", "/b"]


def test_missing_extras_and_unreadable_files_are_named(
    parquet_files, hdf5_files, tmp_path, monkeypatch
):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(FileAccessError, match="not a readable Parquet file") as err:
        RootIterableDataset(bad)
    assert err.value.url == str(bad)
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    with pytest.raises(
        ConfigError,
        match=r"HDF5 files needs the hdf5 extra: pip install 'rootml\[hdf5\]' \(missing: h5py\)",
    ):
        RootIterableDataset(hdf5_files)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ConfigError, match=r"rootml\[parquet\]"):
        RootIterableDataset(parquet_files)


def test_inspect_lists_parquet_columns_and_hdf5_datasets(parquet_files, hdf5_files):
    report = inspect_file(str(parquet_files[0]))
    (table,) = report["trees"]
    rows = {b["name"]: b for b in table["branches"]}
    assert (table["class"], table["entries"]) == ("Parquet", 1300)
    assert rows["Jet"]["fields"] == ["Jet.Px", "Jet.Py"] and rows["Jet.Px"]["kind"] == "jagged"
    assert rows["Jet.Px"]["compressed_bytes"] > 0
    (group,) = inspect_file(str(hdf5_files[0]))["trees"]
    kinds = {b["name"]: b["kind"] for b in group["branches"]}
    assert kinds == {"MET_px": "flat", "moments": "fixed", "jets": "collection", "jets.0": "jagged",
                     "jets.1": "jagged", "names": "unsupported"}  # fmt: skip
