"""Training on a Ray cluster: rootml's whole run inside each worker of Ray Train's TorchTrainer.

Ray places the workers on the cluster's nodes and starts torch.distributed among them (gloo on
CPU, nccl on GPU) before calling the training function; rootml then reads rank and world size
from torch.distributed, exactly as under torchrun, and shards the work units by them. So every
entry is trained on once per epoch, only rank 0 writes the run folder, and the result equals a
torchrun run of the same world size and seed. Ray is imported only when this is called.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rootml.errors import ConfigError
from rootml.train.run import run_from_params


def train_with_ray(
    files: Any,
    labels: Any,
    model_file: str | os.PathLike,
    params: str | os.PathLike | dict[str, Any] | None,
    out_dir: str | os.PathLike,
    *,
    num_workers: int = 2,
    use_gpu: bool = False,
    resources_per_worker: dict[str, float] | None = None,
    resume: bool | str = False,
    max_failures: int = 0,
    storage_path: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """run_from_params(files, labels, model_file, params, out_dir, resume, **overrides) on
    `num_workers` Ray Train workers (one process each, one GPU each with use_gpu=True).

    Connects to the Ray cluster that `ray.init()` joined, or starts a local one. Every worker
    must see `out_dir` (rank 0 writes it; every rank reads its checkpoint on resume), the model
    file and the input files: a shared file system, or URLs (root://, https://). Relative paths
    are taken from this process's working directory, which the workers change to when it exists
    on their node; this process reads the summary from out_dir. Ray keeps its own records in `storage_path` (default ~/ray_results), never in
    out_dir. resume: as run_from_params (False, True, or "auto": continue the run in out_dir if
    it holds one, else start it). max_failures: how often Ray restarts the worker group after a
    failure (needs resume="auto": the restarted workers continue from out_dir's last epoch
    checkpoint). Returns the run's summary (summary.json). Raises ConfigError for max_failures
    without resume="auto", ImportError without Ray Train (`pip install 'rootml[ray]'`),
    ray.train.TrainingFailedError (holding the worker's exception, e.g. a RootmlError) when
    training fails.
    """
    try:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as err:
        raise ImportError("train_with_ray needs Ray Train: pip install 'rootml[ray]'") from err
    if max_failures and resume != "auto":
        # Ray restarts the workers with the same arguments: only "auto" both starts and resumes.
        raise ConfigError(
            f"max_failures={max_failures} needs resume='auto' (continue the run in out_dir if it "
            f"holds one, else start it), not resume={resume!r}"
        )
    config = {
        "cwd": os.getcwd(),
        "arguments": (files, labels, os.path.abspath(model_file), params),
        "out_dir": os.path.abspath(out_dir),
        "resume": resume,
        "overrides": overrides,
    }
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources_per_worker
        ),
        run_config=RunConfig(
            name=f"rootml-{Path(out_dir).name}",
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    trainer.fit()
    return json.loads((Path(config["out_dir"]) / "summary.json").read_text())


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: torch.distributed is already started by Ray."""
    if os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])
    run_from_params(
        *config["arguments"], config["out_dir"], resume=config["resume"], **config["overrides"]
    )
