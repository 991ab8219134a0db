"""Small generated ttH-like signal and background files, and `rootml train` runs of them made
once per session, shared by the training tests that only read a run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="session")
def tth_data(tmp_path_factory):
    spec = importlib.util.spec_from_file_location(
        "rootml_tth_make_data", ROOT / "examples/tth/make_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path_factory.mktemp("tth")
    module.make_data(folder, events=3000, seed=5)
    return folder


@pytest.fixture(scope="session")
def single_run(tth_data, tmp_path_factory):
    """`rootml train`, one process, off a terminal, params test_run.SHARED; (run folder,
    stderr). Read by the artefact, plot and DDP tests: none of them changes it."""
    from tests.train.test_run import SHARED, run_cli

    run = tmp_path_factory.mktemp("single") / "run"
    return run, run_cli(tth_data, run, params=SHARED)


@pytest.fixture(scope="session")
def ddp_run(tth_data, tmp_path_factory):
    """The same under torchrun, two processes (gloo); its run folder. Read by the DDP test and
    compared with Ray Train's run of the same params."""
    from tests.train.test_run import SHARED, run_cli

    run = tmp_path_factory.mktemp("ddp") / "run"
    run_cli(tth_data, run, torchrun=True, params=SHARED)
    return run


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    """Two generated files with known answers (tests/train/_generated.py), 2000 entries each."""
    from ._generated import make_files

    return make_files(tmp_path_factory.mktemp("generated"), entries=2000)
