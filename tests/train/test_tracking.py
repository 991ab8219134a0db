"""Experiment tracking: what TensorBoard's event files and MLflow's file store hold, read back
with their own readers, equals history.json; MLflow also gets the parameters, plots, Specs and
the exported model."""

from __future__ import annotations

import json

import pytest

from rootml.train import run_from_params

pytest.importorskip("tensorboard")
mlflow = pytest.importorskip("mlflow")

MODEL = """import torch

def model(idim):
    return torch.nn.Sequential(torch.nn.Linear(idim, 1), torch.nn.Sigmoid())
"""


def test_tensorboard_and_mlflow_hold_the_history(generated, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rootml.export.run import export_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "model.py").write_text(MODEL)
    store = (tmp_path / "store").as_uri()
    params = {"tree": "Events", "branches": ["x1", "score_hint"], "epochs": 2, "batch_size": 250,
              "device": "cpu", "log": ["tensorboard", "mlflow"], "tracking_uri": store,
              "experiment": "tracked", "reweight_vars": {"pt": [20, 50, 100, 1000]}}  # fmt: skip
    run = tmp_path / "run"
    files = [str(generated["a"]), str(generated["b"])]
    run_from_params(files, [1, 0], tmp_path / "model.py", params, run)
    history = json.loads((run / "history.json").read_text())

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in ("train_loss", "val_loss", "val_auc", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(row["epoch"], pytest.approx(row[key], rel=1e-6)) for row in history]
    steps = events.Scalars("step/train_loss")
    assert [e.step for e in steps] == list(range(1, sum(r["steps"] for r in history) + 1))

    record = json.loads((run / "mlflow.json").read_text())
    client = mlflow.tracking.MlflowClient(store)
    found = client.get_run(record["run_id"])
    assert client.get_experiment(found.info.experiment_id).name == "tracked"
    assert json.loads(found.data.params["epochs"]) == 2
    assert json.loads(found.data.params["reweight_vars"]) == params["reweight_vars"]
    for key in ("train_loss", "val_loss", "val_auc", "train_accuracy"):
        logged = [(m.step, m.value) for m in client.get_metric_history(record["run_id"], key)]
        assert sorted(logged) == [
            (row["epoch"], pytest.approx(row[key], rel=1e-9)) for row in history
        ]
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"specs.json", "params.json", "history.json", "summary.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(record["run_id"], "plots")}
    assert "plots/roc.png" in plots and "plots/loss.png" in plots
    assert found.info.status == "FINISHED"

    export_run(run, tmp_path / "repo", "tracked")
    model = {a.path for a in client.list_artifacts(record["run_id"], "model")}
    assert model == {"model/model.onnx", "model/rootml.json"}
