"""rootml's training inside Ray Train's TorchTrainer, on a local Ray cluster of two CPU workers:
every training entry once per epoch, only rank 0 writes, and the metrics of a torchrun run with
the same world size and seed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import ray

from rootml.errors import ConfigError
from rootml.train.ray_train import train_with_ray
from tests.train import _audited
from tests.train.test_multinode import assert_only_rank_0_writes
from tests.train.test_run import EXPECTED_TRAIN, SHARED, history_of, trained_entries, write_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs; its worker processes record their file changes."""
    audit = tmp_path_factory.mktemp("ray-audit")
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "ROOTML_AUDIT_DIR": str(audit), "OMP_NUM_THREADS": "1"}
    ray.init(
        num_cpus=2,
        log_to_driver=False,
        runtime_env={
            "env_vars": env,
            "worker_process_setup_hook": "tests.train._audited.ray_worker_setup",
        },
    )
    yield audit
    ray.shutdown()


def test_ray_train_matches_torchrun_and_sees_every_entry_once(cluster, tth_data, tmp_path, ddp_run):
    model = write_model(tmp_path)
    run = tmp_path / "ray"
    summary = train_with_ray(
        str(tth_data / "files.txt"),
        str(tth_data / "labels.txt"),
        model,
        SHARED,
        run,
        num_workers=2,
        storage_path=str(tmp_path / "ray_results"),
    )
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert summary == json.loads((run / "summary.json").read_text())
    for epoch in (1, 2):
        keys, per_rank = trained_entries(run, epoch)
        np.testing.assert_array_equal(keys, EXPECTED_TRAIN)
        assert len(per_rank) == 2 and per_rank.min() > 0

    processes = _audited.read(cluster, run)
    assert_only_rank_0_writes(processes, run)
    # Both Ray Train workers ran under the audit: rank 1 changed files too, none in the run.
    lines = [line for log in cluster.glob("*.log") for line in log.read_text().splitlines()[1:]]
    assert {line.rsplit("\t", 1)[1] for line in lines} >= {"0", "1"}

    # torchrun, same params, world size and seed: the same shards per rank, the same gradient
    # averages.
    torchrun = history_of(ddp_run)
    history = history_of(run)
    assert len(history) == len(torchrun) == 2
    for ours, theirs in zip(history, torchrun):
        for key, value in theirs.items():
            if key not in ("seconds", "events_per_s"):
                assert ours[key] == value, key


def test_max_failures_needs_auto_resume(tmp_path):
    # Ray restarts failed workers with the same arguments: resume=False would find the run
    # folder taken on the retry, resume=True would find no run on the first try.
    for resume in (False, True):
        with pytest.raises(ConfigError, match="resume='auto'"):
            train_with_ray("f.root", None, "model.py", {}, tmp_path, max_failures=1, resume=resume)
