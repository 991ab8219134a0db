"""Experiment tracking through fit's on_epoch / on_step hooks: TensorBoard and MLflow.

- "tensorboard" (extra `rootml[tensorboard]`): torch.utils.tensorboard event files in
  RUN/tensorboard: every numeric history value per epoch (train_loss, val_auc, lr, ...) at step
  = epoch, and the training loss of every step as "step/train_loss" at the run's global step.
- "mlflow" (extra `rootml[mlflow]`, mlflow-skinny is enough): one MLflow run per run folder at
  `tracking_uri` (default MLFLOW_TRACKING_URI, else RUN/mlruns) in `experiment` (default
  "rootml"): the parameters (params.json), every numeric history value per epoch (step =
  epoch), and at the end the plots, specs.json, params.json, history.json and summary.json as
  artifacts; `rootml export` adds the exported model.onnx and rootml.json to the same run.
  The run's id is kept in RUN/mlflow.json, so a resumed run continues its MLflow run. A local
  path or file: URI is MLflow's file store, which recent MLflow only opens when
  MLFLOW_ALLOW_FILE_STORE is true: rootml sets it for such URIs (mlflow-skinny has no
  database backend).

Only rank 0 tracks. The packages are imported when a tracker is made, never by importing rootml.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rootml.errors import ConfigError
from rootml.runfolder import MLFLOW_RUN_FILE

log = logging.getLogger(__name__)


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in row.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch"
    }


class TensorBoard:
    def __init__(self, out: Path, steps_done: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError(
                "log tensorboard needs the tensorboard package: pip install 'rootml[tensorboard]'"
            ) from err
        self.folder = out / "tensorboard"
        self.writer = SummaryWriter(str(self.folder))
        self.step = steps_done

    def on_step(self, info: dict[str, Any]) -> None:
        self.step += 1
        self.writer.add_scalar("step/train_loss", info["loss"], self.step)

    def on_epoch(self, row: dict[str, Any]) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(key, value, int(row["epoch"]))
        self.writer.flush()

    def finish(self, out: Path) -> None:
        self.writer.close()


def file_store(uri: str) -> bool:
    """Whether a tracking URI is MLflow's file store (a local path or file: URI)."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def open_mlflow(uri: str):
    """The mlflow module with `uri` as tracking URI (ConfigError when mlflow is missing)."""
    if file_store(uri):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        import mlflow
    except ImportError as err:
        raise ConfigError(
            "log mlflow needs MLflow: pip install 'rootml[mlflow]' (mlflow-skinny)"
        ) from err
    mlflow.set_tracking_uri(uri)
    return mlflow


class MLflow:
    def __init__(self, out: Path, params: dict[str, Any], uri: str | None, experiment: str | None,
                 name: str | None = None):  # fmt: skip
        self.uri = (
            uri or os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").resolve().as_uri()
        )
        self.mlflow = open_mlflow(self.uri)
        record = out / MLFLOW_RUN_FILE
        client = self.mlflow.tracking.MlflowClient(self.uri)
        if record.is_file():  # a resumed run continues its MLflow run
            self.run_id = json.loads(record.read_text())["run_id"]
        else:
            experiment = experiment or "rootml"
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            run = client.create_run(experiment_id, run_name=name or out.resolve().name)
            self.run_id = run.info.run_id
            out.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id,
                                          "experiment": experiment}))  # fmt: skip
            for key, value in params.items():
                # MLflow keeps parameters as text of at most 6000 characters.
                client.log_param(self.run_id, key, json.dumps(value, default=str)[:6000])
        self.client = client

    def on_step(self, info: dict[str, Any]) -> None:
        pass  # steps would flood the tracking store; TensorBoard keeps them

    def on_epoch(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(row["epoch"])) for k, v in _numbers(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, out: Path) -> None:
        for name in ("params.json", "specs.json", "history.json", "summary.json"):
            if (out / name).is_file():
                self.client.log_artifact(self.run_id, str(out / name))
        if (out / "plots").is_dir():
            self.client.log_artifacts(self.run_id, str(out / "plots"), "plots")
        self.client.set_terminated(self.run_id)


class Tracking:
    """The trackers `kinds` ("tensorboard", "mlflow") of run folder `out`, called by fit."""

    def __init__(self, kinds, out: Path, params: dict[str, Any], steps_done: int = 0,
                 name: str | None = None):  # fmt: skip
        self.out, self.trackers = out, []
        for kind in kinds or ():
            if kind == "tensorboard":
                self.trackers.append(TensorBoard(out, steps_done))
            elif kind == "mlflow":
                self.trackers.append(
                    MLflow(out, params, params.get("tracking_uri"), params.get("experiment"), name)
                )
            else:
                raise ConfigError(f"log: unknown tracker {kind!r}; tensorboard or mlflow")

    def on_step(self, info: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.on_step(info)

    def on_epoch(self, row: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.on_epoch(row)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish(self.out)


def log_export(run_dir: Path, version_dir: Path) -> bool:
    """Add an exported model (model.onnx, rootml.json of `version_dir`) to the MLflow run of
    training run `run_dir`, when it has one (RUN/mlflow.json); returns whether it did."""
    record = run_dir / MLFLOW_RUN_FILE
    if not record.is_file():
        return False
    info = json.loads(record.read_text())
    mlflow = open_mlflow(info["tracking_uri"])
    client = mlflow.tracking.MlflowClient(info["tracking_uri"])
    for name in ("model.onnx", "rootml.json"):
        if (version_dir / name).is_file():
            client.log_artifact(info["run_id"], str(version_dir / name), "model")
    return True
