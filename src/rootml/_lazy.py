"""Package exports imported on first use (PEP 562), so that `import rootml` and `rootml --help`
do not load torch, uproot or the server until a name that needs them is used.

A package calls ``lazy_exports(__name__, {"fit": "rootml.train.fit", ...})`` in its
``__init__``; ``from rootml.train import fit`` then imports rootml.train.fit at that moment.
"""

from __future__ import annotations

import importlib
import sys
import types


class _LazyPackage(types.ModuleType):
    """A package module whose exported names resolve on first access."""

    _exports: dict[str, str]

    def __getattr__(self, name: str):
        module = self.__dict__.get("_exports", {}).get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        self.__dict__[name] = value
        return value

    def __dir__(self) -> list[str]:
        return sorted({*self.__dict__, *self._exports})

    def __setattr__(self, name: str, value) -> None:
        # Importing submodule rootml.train.fit binds attribute "fit" of the package to that
        # module; the package exports the function of the same name instead, as an eager
        # `from rootml.train.fit import fit` in __init__ would.
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_exports", {}):
            return
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: dict[str, str]) -> list[str]:
    """Make `exports` (name -> module defining it) attributes of `package`, imported on first
    access. Returns the sorted names, for the package's ``__all__``."""
    module = sys.modules[package]
    module.__class__ = _LazyPackage
    module._exports = dict(exports)
    return sorted(exports)
