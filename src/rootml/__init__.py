"""rootml: ROOT files in, trained and served models out."""

from rootml.datasets import RootIterableDataset, fit_specs
from rootml.errors import (
    ConfigError,
    DataValueError,
    FileAccessError,
    ModelError,
    ProtocolError,
    RootmlError,
    SchemaError,
    SpecsMismatch,
)
from rootml.transforms import Specs

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataValueError",
    "FileAccessError",
    "ModelError",
    "ProtocolError",
    "RootIterableDataset",
    "RootmlError",
    "SchemaError",
    "Specs",
    "SpecsMismatch",
    "__version__",
    "fit_specs",
]
