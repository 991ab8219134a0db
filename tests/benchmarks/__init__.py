"""Tests of the scripts in benchmarks/, which are files, not an installed package."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(path: Path | str):
    """The module of a script file: a path, or a name in benchmarks/ ("serve" -> serve.py)."""
    path = Path(path) if str(path).endswith(".py") else BENCH / f"{path}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
