"""Which install extra brings what (pyproject.toml's optional dependencies, by import name), and
the one-line refusal when a job runs without its extra:

    rootml serve needs the serve extra: pip install 'rootml[serve]' (missing: fastapi, uvicorn)
"""

from __future__ import annotations

import importlib.util

from rootml.errors import ConfigError

# extra -> the top-level modules rootml imports from its packages (pyproject.toml: the same
# extras; tests/test_extras.py checks both against each other).
MODULES = {
    "train": ("matplotlib", "tqdm"),
    "export": ("onnx", "onnxruntime"),
    "serve": ("onnx", "onnxruntime", "fastapi", "uvicorn", "orjson", "prometheus_client", "grpc"),
    "client": ("httpx", "orjson"),
    "parquet": ("pyarrow",),
    "hdf5": ("h5py",),
    "ray": ("ray",),
    "dask": ("dask", "distributed", "dask_awkward"),
}


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (not installed)."""
    return [name for name in MODULES[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, what: str, **context: object) -> None:
    """Raise ConfigError, one line naming the extra to install, when `what` (a job, "rootml
    serve", or a feature, "plots", "reading Parquet files") cannot run here because modules of
    `extra` are missing. context: url=..., as RootmlError takes it."""
    absent = missing(extra)
    if absent:
        raise ConfigError(
            f"{what} needs the {extra} extra: pip install 'rootml[{extra}]' "
            f"(missing: {', '.join(absent)})",
            **context,
        )
