"""Fixtures of the predict tests: a model repository with Specs fitted on the test files, and a
Dask LocalCluster (processes, 2 workers, 1 thread each) shared by the Dask tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from rootml.export.repository import add_onnx_model
from tests.serve._physics_model import add_model, hzz_specs, onnx_bytes, rntuple_specs


@pytest.fixture(scope="session")
def specs():
    return {"hzz": hzz_specs(), "muons": rntuple_specs()}


@pytest.fixture(scope="session")
def repo(tmp_path_factory, specs) -> tuple[Path, dict[str, bytes]]:
    """(repository folder, model name -> ONNX bytes)."""
    path = tmp_path_factory.mktemp("predict-repo")
    models = {
        "hzz": add_model(path, "hzz", specs["hzz"], "standard"),
        "heads": add_model(path, "heads", specs["hzz"], "minmax", seed=3, two_heads=True),
        "muons": add_model(path, "muons", specs["muons"], "standard", seed=5),
        "sorted": add_model(
            path, "sorted", specs["hzz"], None, seed=7, sort_by={"Jet": "Jet_E"}, nan_policy="raise"
        ),
    }
    add_onnx_model(path, "plain", onnx_bytes(4))
    return path, models


@pytest.fixture(scope="session")
def dask_client():
    """A distributed.Client of a LocalCluster: 2 worker processes of 1 thread each."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
