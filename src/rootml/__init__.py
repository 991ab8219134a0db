"""rootml: ROOT files in, trained and served models out.

``import rootml`` is light: torch, uproot and the server load when a name that needs them is
first used (``rootml.RootIterableDataset``, ``from rootml import Specs``).
"""

from rootml._lazy import lazy_exports
from rootml.errors import (
    ConfigError,
    DataValueError,
    FileAccessError,
    ModelError,
    ProtocolError,
    RootmlError,
    SchemaError,
    SpecsMismatch,
    UserCodeError,
)

# The one version constant: pyproject.toml reads it (tool.setuptools.dynamic).
__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataValueError",
    "FileAccessError",
    "ModelError",
    "ProtocolError",
    "RootmlError",
    "SchemaError",
    "SpecsMismatch",
    "UserCodeError",
    "__version__",
    *lazy_exports(
        __name__,
        {
            "RootIterableDataset": "rootml.datasets",
            "fit_specs": "rootml.datasets",
            "Specs": "rootml.transforms",
        },
    ),
]
