"""root:// through a real xrootd-server on loopback: the same batches as local reads."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rootml import FileAccessError, RootIterableDataset
from tests.conftest import DATA, HZZ, RNTUPLE, running_xrootd

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


# A reply from the XRootD server reaches a Python callback while the main thread holds the GIL
# and forks: XrdCl's own fork handler waits inside fork() for its thread, which waits for the GIL
# (a hang, not an error). The main thread keeps the GIL for a second before forking (a switch
# interval of a minute), so the reply has arrived and its thread is waiting when fork() runs.
FORK_WHILE_A_CALLBACK_WAITS = """
import os, sys, time
from XRootD import client
from rootml import RootIterableDataset

url = sys.argv[1]
def entries():
    ds = RootIterableDataset(url, branches=["MET_px"], chunk_size=1000)
    return sum(len(batch["entry"]) for batch in ds)

parent = entries()
handle = client.File()
assert handle.open(url, timeout=20)[0].ok
handle.close(callback=lambda *reply: None, timeout=20)
sys.setswitchinterval(60)
end = time.monotonic() + 1
while time.monotonic() < end:
    pass
pid = os.fork()
if pid == 0:
    os._exit(0 if entries() == parent else 3)
sys.setswitchinterval(0.005)
_, status = os.waitpid(pid, 0)
print(parent, os.waitstatus_to_exitcode(status), entries())
"""


def test_fork_while_an_xrootd_reply_waits_for_the_gil_does_not_hang(xrootd_server, results):
    url = xrootd_server.url("uproot-HZZ.root")
    env = {k: v for k, v in os.environ.items() if k != "XRD_RUNFORKHANDLER"}  # rootml's hooks
    process = subprocess.Popen(
        [sys.executable, "-c", FORK_WHILE_A_CALLBACK_WAITS, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # the forked child goes with it when it hangs
    )
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the process hung in fork() (XrdCl's fork handler waiting for the GIL)")
    assert process.returncode == 0, err[-3000:]
    # entries read in the parent before the fork, the child's exit status (0: it read the
    # same entries through rootml), entries read in the parent after the fork
    assert out.split() == ["2421", "0", "2421"], err[-3000:]
    results.update(
        kind="fault",
        what="fork() while an XRootD reply waits for the GIL (DataLoader workers starting)",
        injected=1,
        survived=1,
    )


def open_descriptors(pid: int, path: Path) -> int:
    """How many file descriptors of process `pid` are open on `path` (from /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path.resolve()))


def test_xrootd_server_holds_no_open_file_once_rootml_is_done(tmp_path):
    with running_xrootd([HZZ]) as server:
        served = server.folder / HZZ.name
        ds = RootIterableDataset(server.url(HZZ.name), branches=["MET_px"], chunk_size=500)
        during, rows = [], 0
        for batch in ds:
            during.append(open_descriptors(server.process.pid, served))
            rows += len(batch["entry"])
        assert rows == 2421 and max(during) >= 1  # the server saw the reads: the probe works
        # fsspec-xrootd would keep its handle open 30 s after the last read; rootml closes it
        # when it closes the file (the server may release its descriptor a moment later).
        deadline = time.monotonic() + 10
        while open_descriptors(server.process.pid, served) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_descriptors(server.process.pid, served) == 0


def test_a_user_set_xrd_runforkhandler_stands():
    code = (
        "import os\nos.environ['XRD_RUNFORKHANDLER'] = '1'\n"
        "from rootml.datasets._xrootd import make_fork_safe\nfrom XRootD import client\n"
        "print(make_fork_safe(), client.EnvGetInt('RunForkHandler'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "1"]  # XrdCl's own handler, as the user asked
