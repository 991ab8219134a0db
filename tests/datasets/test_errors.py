"""Bad input: each a rootml exception naming the file URL, tree, branch or entry range."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import awkward as ak
import numpy as np
import pytest
import uproot

from rootml import FileAccessError, RootIterableDataset, SchemaError
from tests.conftest import DATA, HZZ, ZMUMU, free_port


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileAccessError, match="nope.root"):
        RootIterableDataset(tmp_path / "nope.root")


def test_missing_tree_lists_the_trees():
    with pytest.raises(SchemaError, match=r"no TTree or RNTuple named 'Events'.*\['events'\]"):
        RootIterableDataset(HZZ, tree="Events")


def test_several_trees_need_a_name(tmp_path):
    path = tmp_path / "two.root"
    with uproot.recreate(path) as out:
        out.mktree("a", {"x": np.float32}).extend({"x": np.zeros(3, np.float32)})
        out.mktree("b", {"x": np.float32}).extend({"x": np.zeros(3, np.float32)})
    with pytest.raises(SchemaError, match=r"several trees \['a', 'b'\]"):
        RootIterableDataset(path)
    assert RootIterableDataset(path, tree="b").num_entries == 3


def test_missing_branch_names_close_matches():
    with pytest.raises(SchemaError, match=r"Jet_PX.*closest: \['Jet_Px'"):
        RootIterableDataset(HZZ, branches=["Jet_PX"])


def test_unusable_type_is_named_with_a_hint():
    path = DATA / "uproot-sample-6.20.04-uncompressed.root"
    with pytest.raises(SchemaError, match=r"branch 'str'.*exclude=\['str'\]"):
        RootIterableDataset(path, branches=["str", "i4"])
    ds = RootIterableDataset(path)  # by default such branches are skipped with a warning
    assert "str" not in ds.feature_names and "i4" in ds.feature_names
    split = DATA / "uproot-small-evnt-tree-fullsplit.root"
    with pytest.raises(SchemaError, match="no numeric feature branch"):
        RootIterableDataset(split)


def test_files_with_other_branches_are_named():
    with pytest.raises(SchemaError, match=r"uproot-Zmumu.root.*differs.*missing \['MET_px'\]"):
        RootIterableDataset([HZZ, ZMUMU], tree="events", branches=["MET_px"])


def test_truncated_file_names_file_and_entry_range(tmp_path):
    broken = tmp_path / "truncated.root"
    data = HZZ.read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(FileAccessError, match="truncated.root"):
        list(RootIterableDataset(broken, branches=["Jet_Px"], max_len=2, chunk_size=500))


def test_corrupt_baskets_name_the_entry_range_and_skip_counts(tmp_path, results):
    corrupt = tmp_path / "corrupt.root"
    shutil.copy(HZZ, corrupt)
    tree = uproot.open(HZZ)["events"]
    branch = tree["Jet_Px"]
    start = branch.member("fBasketSeek")[0]
    raw = bytearray(corrupt.read_bytes())
    raw[start + 100 : start + 400] = b"\x00" * 300  # inside the compressed basket payload
    corrupt.write_bytes(bytes(raw))
    ds = RootIterableDataset([corrupt, HZZ], branches=["Jet_Px"], max_len=2, chunk_size=3000)
    with pytest.raises(FileAccessError, match=r"corrupt.root, tree 'events', entries 0-2421"):
        list(ds)
    skipping = RootIterableDataset([corrupt, HZZ], branches=["Jet_Px"], max_len=2, on_error="skip")
    rows = sum(len(b["entry"]) for b in skipping)
    assert rows == 2421
    assert skipping.report["skipped_entries"] == 2421 and skipping.report["skipped_units"] == 1
    results.update(
        kind="bad input",
        what="corrupt basket: raise names it, skip counts it",
        tried=2,
        refused=2,
        skipped_entries=skipping.report["skipped_entries"],
    )


def test_empty_files_are_counted(tmp_path):
    empty = tmp_path / "empty.root"
    with uproot.recreate(empty) as out:
        out.mktree("events", {"MET_px": np.float32})
    ds = RootIterableDataset([empty, HZZ], branches=["MET_px"])
    assert ds.report["empty_files"] == 1
    assert sum(len(b["entry"]) for b in ds) == 2421


def test_refused_connection_fails_fast_naming_the_url():
    url = f"root://127.0.0.1:{free_port()}//data/f.root"
    begin = time.monotonic()
    with pytest.raises(
        FileAccessError, match=f"in file {url}: cannot read after 2 attempts"
    ) as err:
        RootIterableDataset(url, retries=1, backoff=0.1)
    assert err.value.url == url
    assert time.monotonic() - begin < 30


def test_xrootd_timeouts_are_set_at_the_first_remote_open_not_at_import():
    """Importing rootml.datasets leaves the environment alone; the first root:// open puts the
    bounded XRD_* timeouts in (before the XRootD client loads, which reads them once), and a
    value the user set stays."""
    code = f"""
import json, os, sys
os.environ["XRD_REQUESTTIMEOUT"] = "7"
import rootml.datasets._files as files
before = {{k: v for k, v in os.environ.items() if k.startswith("XRD_")}}
loaded_before = "XRootD.client" in sys.modules
try:
    files.open_file("root://127.0.0.1:{free_port()}//data/f.root", retries=0)
except Exception as err:
    kind = type(err).__name__
after = {{k: v for k, v in os.environ.items() if k.startswith("XRD_")}}
from XRootD import client
print(json.dumps([before, loaded_before, after, kind, client.EnvGetInt("RunForkHandler")]))
"""
    # This process may have set them already (an earlier test opened a root:// file).
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRD_")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    before, loaded_before, after, kind, fork_handler = json.loads(done.stdout.splitlines()[-1])
    assert before == {"XRD_REQUESTTIMEOUT": "7"} and not loaded_before
    assert kind == "FileAccessError"
    assert after["XRD_REQUESTTIMEOUT"] == "7"  # the user's
    assert after["XRD_CONNECTIONWINDOW"] == "5" and after["XRD_STREAMERRORWINDOW"] == "0"
    assert "XRD_RUNFORKHANDLER" not in after  # the user's to set; rootml's fork hooks otherwise
    assert fork_handler == 0  # XrdCl's own, which hangs with a reply waiting for the GIL, is off


def test_preprocess_hook_from_a_module_file(tmp_path):
    hook = tmp_path / "hook.py"
    hook.write_text(
        "def double(chunk):\n    chunk['MET_px'] = chunk['MET_px'] * 2\n    return chunk\n"
    )
    ds = RootIterableDataset(HZZ, branches=["MET_px"], preprocess=f"{hook}:double")
    got = np.concatenate([b["features"][:, 0].numpy() for b in ds])
    assert np.array_equal(got, 2 * uproot.open(HZZ)["events"]["MET_px"].array(library="np"))
    with pytest.raises(FileAccessError, match="defines no function 'nope'"):
        list(RootIterableDataset(HZZ, branches=["MET_px"], preprocess=f"{hook}:nope"))
    assert ak is not None


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_report_sums_over_workers(tmp_path, context):
    import torch

    corrupt = tmp_path / "corrupt.root"
    raw = bytearray(HZZ.read_bytes())
    start = uproot.open(HZZ)["events"]["Jet_Px"].member("fBasketSeek")[0]
    raw[start + 100 : start + 400] = b"\x00" * 300
    corrupt.write_bytes(bytes(raw))
    ds = RootIterableDataset(
        [corrupt, HZZ, DATA / "uproot-HZZ-zstd.root"],
        branches=["Jet_Px"],
        max_len=2,
        on_error="skip",
        batch_size=1000,
        drop_last=True,
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context=context
    )
    rows = sum(len(b["entry"]) for b in loader)
    report = ds.report
    assert report["skipped_entries"] == 2421 and report["skipped_units"] == 1
    assert rows + report["dropped_last"] == 2 * 2421
    counts = ak.num(uproot.open(HZZ)["events"]["Jet_Px"].array())
    assert report["truncated:Jet_Px"] == 2 * int(ak.sum(np.maximum(counts - 2, 0)))
