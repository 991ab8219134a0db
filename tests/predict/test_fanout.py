"""`rootml predict` on Dask, one task per file, on LocalClusters of 2 worker processes of 1 thread:
friend trees and parquet equal to the single-process run; a task that fails once (its worker
killed mid-write, its input missing at first) is run again and the output is complete; files
that keep failing leave the run reported incomplete (exit 2, a report naming each file and
entry range not scored) with no output for them and nothing partial left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from rootml.cli import main
from rootml.errors import ConfigError
from rootml.predict import predict, predict_dask
from rootml.predict.fanout import REPORT
from tests.predict._faults import FaultsOnce
from tests.serve._physics_model import (
    HZZ,
    HZZ_BRANCHES,
    read_columns,
    reference_inputs,
    run_onnx,
    specs_statistics,
)

TYPES = {
    "MET_px": "float32",
    "MET_py": "float32",
    "Jet_Px": "var * float32",
    "Jet_E": "var * float32",
    "Muon_Px": "var * float32",
    "Muon_Charge": "var * int32",
}


def write_events(path: Path, columns: dict) -> Path:
    """A TTree "events" of `columns` (branch -> array), written by uproot."""
    with uproot.recreate(path) as out:
        out.mktree("events", {name: TYPES[name] for name in columns})
        if len(next(iter(columns.values()))):
            out["events"].extend(columns)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Four inputs of different contents and sizes: HZZ as ROOT wrote it, entries 500-1700 and
    1700-2421 + 0-300 of it written by uproot, and one without entries."""
    folder = tmp_path_factory.mktemp("fanout-inputs")
    full = read_columns(HZZ, "events", HZZ_BRANCHES)
    part = {k: v[500:1700] for k, v in full.items()}
    wrapped = {k: ak.concatenate([v[1700:], v[:300]]) for k, v in full.items()}
    empty = {k: v[:0] for k, v in full.items()}
    return {
        "full": str(HZZ),
        "middle": str(write_events(folder / "middle.root", part)),
        "wrapped": str(write_events(folder / "wrapped.root", wrapped)),
        "empty": str(write_events(folder / "empty.root", empty)),
    }


@pytest.fixture(scope="module")
def single(repo, inputs, tmp_path_factory) -> tuple[Path, Path]:
    """The single-process run: (folder of friend trees, parquet file)."""
    out = tmp_path_factory.mktemp("fanout-single")
    predict(
        str(repo[0] / "hzz"), list(inputs.values()), [str(out), str(out / "all.parquet")],
        progress=False,
    )  # fmt: skip
    return out, out / "all.parquet"


def friend(folder: Path, source: str) -> Path:
    return folder / f"{Path(source).stem}_scores.root"


def assert_same_friend(got: Path, want: Path, source: str) -> None:
    """Same tree, branches, types and entries as `want`, value for value, entry-aligned with
    `source`."""
    a, b = uproot.open(got)["events"], uproot.open(want)["events"]
    assert a.keys() == b.keys() == ["score"]
    assert a.typenames() == b.typenames()
    assert a.num_entries == b.num_entries == uproot.open(source)["events"].num_entries
    np.testing.assert_array_equal(a["score"].array(library="np"), b["score"].array(library="np"))


def assert_same_parquet(got: Path, want: Path) -> None:
    a, b = ak.from_parquet(got), ak.from_parquet(want)
    assert a.type == b.type and ak.fields(a) == ["file", "entry", "score"]
    assert ak.to_list(a.file) == ak.to_list(b.file)
    np.testing.assert_array_equal(a.entry, b.entry)
    np.testing.assert_array_equal(ak.to_numpy(a.score), ak.to_numpy(b.score))


def test_local_cluster_equals_single_process(repo, specs, inputs, single, tmp_path):
    """`rootml predict --dask local:2` in its own process (the CLI under Dask's spawned
    workers), against the single-process run and against onnxruntime on uproot's reads."""
    out, table = tmp_path / "scores", tmp_path / "all.parquet"
    files = list(inputs.values())
    command = [sys.executable, "-m", "rootml", "predict", "--model", str(repo[0] / "hzz")]
    command += ["--files", *files, "--out", str(out), str(table), "--dask", "local:2"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(friend(out, f)) for f in files] + [str(table)]
    assert "scored 4642 entries of 4 file(s)" in run.stderr
    for source in files:
        assert_same_friend(friend(out, source), friend(single[0], source), source)
    assert_same_parquet(table, single[1])
    assert sorted(os.listdir(out)) == sorted(friend(out, f).name for f in files)
    assert sorted(os.listdir(tmp_path)) == ["all.parquet", "scores"]
    # The wrapped input, independently: features from uproot's reads, onnxruntime's outputs.
    columns = read_columns(Path(inputs["wrapped"]), "events", HZZ_BRANCHES)
    stats = specs_statistics(specs["hzz"].to_dict(), "standard")
    want = run_onnx(
        repo[1]["hzz"],
        reference_inputs(columns, specs["hzz"].feature_names, None, "standard", stats),
    )["score"][:, 0]
    scores = uproot.open(friend(out, inputs["wrapped"]))["events"]["score"].array(library="np")
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-5)


def test_a_task_failing_once_is_run_again(repo, inputs, single, dask_client, tmp_path):
    """The worker scoring "middle" dies after writing its first basket; "wrapped" is missing
    at its first open. Both are run again (the scheduler's rescheduling, dask's retries=) and
    the output is complete and equal to the single-process run."""
    markers, out, table = tmp_path / "markers", tmp_path / "scores", tmp_path / "all.parquet"
    markers.mkdir()
    (markers / "middle_scores.root.kill-once").touch()
    (markers / "wrapped.root.missing-once").touch()
    dask_client.register_plugin(FaultsOnce(markers))
    try:
        summary = predict_dask(
            str(repo[0] / "hzz"), list(inputs.values()), [str(out), str(table)],
            scheduler=dask_client, retries=1, flush_entries=500, progress=False,
        )  # fmt: skip
    finally:
        dask_client.unregister_worker_plugin(FaultsOnce.name)
    assert not list(markers.iterdir())  # both faults happened
    assert summary["entries"] == 4642
    for source in inputs.values():
        assert_same_friend(friend(out, source), friend(single[0], source), source)
    assert_same_parquet(table, single[1])
    assert sorted(os.listdir(out)) == sorted(friend(out, f).name for f in inputs.values())
    assert sorted(os.listdir(tmp_path)) == ["all.parquet", "markers", "scores"]


def test_files_failing_every_time_leave_the_run_incomplete(
    repo, inputs, single, dask_client, tmp_path, capsys
):
    """A corrupt file and a file without a branch of the Specs, among good ones, through the
    CLI on a running scheduler's address: exit 2; the report names both with their entry
    ranges; the good files' friend trees are complete; no friend tree and no parquet file for
    this run's failures (older ones removed), nothing temporary left. A complete rerun into the
    same destination removes the report."""
    out, table = tmp_path / "scores", tmp_path / "all.parquet"
    corrupt = tmp_path / "corrupt.root"
    corrupt.write_bytes(b"not a ROOT file\n" * 100)
    columns = read_columns(HZZ, "events", HZZ_BRANCHES, 0, 777)
    columns.pop("Muon_Charge")
    partial = write_events(tmp_path / "partial.root", columns)
    out.mkdir()
    for stale in (friend(out, str(corrupt)), friend(out, str(partial)), table):
        stale.write_bytes(b"an older run's output")
    files = [inputs["middle"], str(corrupt), inputs["wrapped"], str(partial)]
    command = ["predict", "--model", str(repo[0] / "hzz"), "--files", *files]
    command += ["--out", str(out), str(table), "--dask", dask_client.scheduler.address]
    assert main([*command, "--retries", "1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    (message,) = [line for line in lines if line.startswith("rootml predict: error:")]
    assert message.startswith("rootml predict: error: 2 of 4 files not scored")
    assert f"{corrupt} (entries all: FileAccessError" in message
    assert f"{partial} (entries 0-777: SchemaError" in message and "Muon_Charge" in message
    report = json.loads((out / REPORT).read_text())
    assert report["complete"] is False
    assert [(f["file"], f["entries"]) for f in report["not_scored"]] == [
        (str(corrupt), None),
        (str(partial), [0, 777]),
    ]
    assert "not a readable ROOT file" in report["not_scored"][0]["error"]
    assert report["scored"] == [
        {"file": inputs["middle"], "entries": [0, 1200]},
        {"file": inputs["wrapped"], "entries": [0, 1021]},
    ]
    good = [inputs["middle"], inputs["wrapped"]]
    assert report["outputs"] == [str(friend(out, f)) for f in good]
    assert sorted(os.listdir(out)) == sorted([REPORT, *(friend(out, f).name for f in good)])
    assert sorted(os.listdir(tmp_path)) == ["corrupt.root", "partial.root", "scores"]
    for source in good:
        assert_same_friend(friend(out, source), friend(single[0], source), source)

    command = ["predict", "--model", str(repo[0] / "hzz"), "--files", *good]
    assert main([*command, "--out", str(out), "--dask", dask_client.scheduler.address]) == 0
    assert sorted(os.listdir(out)) == sorted(friend(out, f).name for f in good)


def test_arguments_are_checked_before_any_task(repo, tmp_path, capsys):
    model, out = str(repo[0] / "hzz"), str(tmp_path / "s.root")
    with pytest.raises(ConfigError, match="retries"):
        predict_dask(model, str(HZZ), out, retries=-1)
    command = ["predict", "--model", model, "--files", str(HZZ), "--out", out]
    assert main([*command, "--dask", "local:0"]) == 2
    assert "local:N with N >= 1" in capsys.readouterr().err
    assert main([*command, "--model", str(repo[0] / "plain"), "--dask", "local:1"]) == 2
    assert "no Specs" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
