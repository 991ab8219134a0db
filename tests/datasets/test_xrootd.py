"""root:// through a real xrootd-server on loopback: the same batches as local reads."""

from __future__ import annotations

import collections
import time

import pytest
import torch

from rootml import FileAccessError, RootIterableDataset
from tests.conftest import DATA, RNTUPLE

pytestmark = pytest.mark.xrootd


def batches(ds, **loader):
    return list(torch.utils.data.DataLoader(ds, batch_size=None, **loader))


@pytest.mark.parametrize("name", ["uproot-HZZ.root", RNTUPLE.name])
def test_remote_reads_equal_local(xrootd_server, name):
    options = dict(batch_size=300, chunk_size=400, shuffle=True, seed=2, max_len=3)
    remote = batches(RootIterableDataset(xrootd_server.url(name), **options), num_workers=2)
    local = batches(RootIterableDataset(DATA / name, **options), num_workers=2)
    assert len(remote) == len(local)
    for a, b in zip(remote, local):
        for key in ("features", "mask", "entry"):
            assert torch.equal(a[key], b[key])


def test_remote_and_local_files_together_exactly_once(xrootd_server):
    files = [xrootd_server.url("uproot-HZZ.root"), str(DATA / "uproot-HZZ-zstd.root")]
    ds = RootIterableDataset(files, branches=["MET_px"], chunk_size=500, shuffle=True)
    pairs = [
        (f, e)
        for b in batches(ds, num_workers=2)
        for f, e in zip(b["file"].tolist(), b["entry"].tolist())
    ]
    assert collections.Counter(pairs) == collections.Counter(
        (f, e) for f in range(2) for e in range(2421)
    )


def test_missing_remote_file_names_the_url(xrootd_server):
    url = xrootd_server.url("missing.root")
    begin = time.monotonic()
    with pytest.raises(FileAccessError, match="missing.root"):
        RootIterableDataset(url, retries=1, backoff=0.1)
    assert time.monotonic() - begin < 30
