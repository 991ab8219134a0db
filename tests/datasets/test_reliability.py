"""Faults on the data path: an XRootD server killed and restarted mid-epoch, gone for good, a
DataLoader worker killed. Bounded in count and time; loopback only."""

from __future__ import annotations

import collections
import gc
import os
import signal
import threading
import time

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from rootml import FileAccessError, RootIterableDataset
from rootml.datasets._files import close_file, open_file
from tests.conftest import DATA, HZZ, running_xrootd

pytestmark = pytest.mark.xrootd

ALL = collections.Counter((0, e) for e in range(2421))


def lost(seen) -> dict:
    """Entries missing from or repeated in `seen` (file, entry) pairs, for the report."""
    counts = collections.Counter(seen)
    return {
        "entries": ALL.total(),
        "lost": (ALL - counts).total(),
        "repeated": (counts - ALL).total(),
    }


def pairs(batch):
    return list(zip(batch["file"].tolist(), batch["entry"].tolist()))


def test_server_restarts_mid_epoch_ten_times_and_the_epoch_is_exactly_once(results):
    with running_xrootd([HZZ]) as server:
        ds = RootIterableDataset(
            server.url(HZZ.name),
            branches=["MET_px", "Jet_Px"],
            max_len=2,
            chunk_size=60,
            batch_size=50,
            shuffle=True,
            backoff=0.1,
            retries=8,  # up to 25 s for xrootd to come back: a restart is slow on a loaded machine
        )
        seen, timers = [], []
        for i, batch in enumerate(ds):
            seen += pairs(batch)
            if i % 4 == 2 and len(timers) < 10:
                timers[-1:] and timers[-1].join()
                server.stop()
                timers.append(threading.Timer(0.1, server.start))  # down for 0.1 s + its start
                timers[-1].start()
        for timer in timers:
            timer.join()
        assert len(timers) == 10
        assert collections.Counter(seen) == ALL
        results.update(
            lost(seen),
            kind="fault",
            what="xrootd killed and restarted mid-epoch",
            injected=len(timers),
            survived=len(timers),
        )


def test_server_gone_for_good_names_the_url_and_state_resumes_later(results):
    with running_xrootd([HZZ]) as server:
        url = server.url(HZZ.name)
        options = dict(
            branches=["MET_px"],
            chunk_size=100,
            batch_size=100,
            shuffle=True,
            retries=2,
            backoff=0.2,
        )
        ds = RootIterableDataset(url, **options)
        seen = []
        begin = time.monotonic()
        with pytest.raises(
            FileAccessError, match=f"in file {url}, tree 'events', entries .*: cannot read"
        ):
            for i, batch in enumerate(ds):
                seen += pairs(batch)
                if i == 5:
                    server.stop()
        assert time.monotonic() - begin < 60
        state = ds.state_dict()
        server.start()
        resumed = RootIterableDataset(url, **options)
        resumed.load_state_dict(state)
        rest = [p for batch in resumed for p in pairs(batch)]
        assert collections.Counter(seen + rest) == ALL
        results.update(
            lost(seen + rest),
            kind="fault",
            injected=1,
            survived=1,
            what="xrootd gone for good: error names the URL, resumed from state",
        )


def test_a_restarted_server_is_read_at_the_first_attempt(results):
    """For XRD_STREAMERRORWINDOW seconds after a failed connection the XRootD client answers
    every request to that server with the cached "[FATAL] Connection error" without trying it,
    so retries 0.2-0.5 s apart never reached a server back within the second. rootml sets the
    window to 0: the first attempt after the restart reads (the restart takes ~0.1 s)."""
    with running_xrootd([HZZ]) as server:
        url = server.url(HZZ.name)
        close_file(open_file(url, retries=0))
        server.stop()
        with pytest.raises(FileAccessError, match="cannot read after 1 attempts"):
            open_file(url, retries=0)
        server.start()
        file = open_file(url, retries=0)
        try:
            assert file["events"].num_entries == 2421
        finally:
            close_file(file)
    results.update(
        kind="fault",
        injected=1,
        survived=1,
        what="xrootd restarted: the first read attempt after it succeeds",
    )


def test_killed_worker_surfaces_promptly_and_the_run_resumes_from_state(results):
    options = dict(
        branches=["MET_px", "Jet_Px"], max_len=3, chunk_size=100, batch_size=100, shuffle=True
    )
    loader = StatefulDataLoader(
        RootIterableDataset(HZZ, **options), batch_size=None, num_workers=2, timeout=60
    )
    seen, state = [], None
    begin = time.monotonic()
    with pytest.raises((RuntimeError, ConnectionError)):  # the loader names the killed worker
        for i, batch in enumerate(loader):
            seen += pairs(batch)
            state = loader.state_dict()
            if i == 3:
                for pid in loader._iterator._workers:  # noqa: SLF001  (the test kills a worker)
                    os.kill(pid.pid, signal.SIGKILL)
                    break
    assert time.monotonic() - begin < 30
    del loader  # shuts the other worker down and unhooks the loader's SIGCHLD handler
    gc.collect()
    resumed = StatefulDataLoader(
        RootIterableDataset(HZZ, **options), batch_size=None, num_workers=2
    )
    resumed.load_state_dict(state)
    rest = [p for batch in resumed for p in pairs(batch)]
    assert collections.Counter(seen + rest) == ALL
    results.update(
        lost(seen + rest),
        kind="fault",
        injected=1,
        survived=1,
        what="DataLoader worker killed: error surfaces, resumed from state",
    )


def test_remote_file_opened_in_the_parent_before_fork_does_not_hang_workers(results):
    with running_xrootd([HZZ]) as server:
        url = server.url(HZZ.name)
        import uproot

        with uproot.open(url, timeout=10) as parent_file:  # the parent holds a live connection
            assert parent_file["events"].num_entries == 2421
            ds = RootIterableDataset(url, branches=["MET_px"], chunk_size=300)
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, timeout=60)
            seen = [p for batch in loader for p in pairs(batch)]
        assert collections.Counter(seen) == ALL
    assert DATA.exists()
    results.update(
        lost(seen),
        kind="fault",
        injected=1,
        survived=1,
        what="root:// file open in the parent when DataLoader workers fork",
    )
