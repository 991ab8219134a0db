"""Small generated ttH-like signal and background files, shared by the training tests."""

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
def generated(tmp_path_factory):
    """Two generated files with known answers (tests/train/_generated.py), 2000 entries each."""
    from ._generated import make_files

    return make_files(tmp_path_factory.mktemp("generated"), entries=2000)
