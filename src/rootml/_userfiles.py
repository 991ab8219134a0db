"""Files a user hands rootml: Python files defining a function (model.py, a preprocess hook),
`.txt` lists (files.txt, labels.txt), JSON files (params.json, metadata) and the bearer-token
file. Each reader raises a rootml error naming the file, never a bare OSError or ImportError."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rootml.errors import ConfigError, FileAccessError, UserCodeError


def import_function(path: str | os.PathLike, name: str, what: str = "Python file") -> Callable:
    """The function `name` defined by the Python file at `path`, imported by path under a
    private module name (one per file, so two files never collide). `what` names the file in
    errors ("model file", "preprocess hook"). Raises UserCodeError when the file is missing,
    fails to import or defines no such function."""
    path = Path(path)
    if not path.is_file():
        raise UserCodeError(f"{what} {path} not found")
    module_name = "rootml_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs so that dataclasses and pickling inside the user's file work.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code: any failure is theirs to see, in one line
        sys.modules.pop(module_name, None)
        raise UserCodeError(f"cannot import {what} {path}: {err!r}") from err
    function = getattr(module, name, None)
    if not callable(function):
        raise UserCodeError(f"{what} {path} defines no function {name!r}")
    return function


def read_list_file(path: str | os.PathLike) -> list[str]:
    """The entries of a `.txt` list (files.txt, labels.txt): one per line, `#` starts a
    comment, blank lines skipped. Raises FileAccessError when it cannot be read."""
    try:
        with open(path) as listing:
            lines = [line.split("#", 1)[0].strip() for line in listing]
    except OSError as err:
        raise FileAccessError(f"cannot read the list file {path}: {err.strerror}") from err
    return [line for line in lines if line]


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The JSON value in the file at `path`; FileAccessError or ConfigError naming `what`."""
    try:
        with open(path) as source:
            return json.load(source)
    except FileNotFoundError as err:
        raise FileAccessError(f"{what} {path} not found") from err
    except OSError as err:
        raise FileAccessError(f"cannot read {what} {path}: {err.strerror}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{what} {path} is not valid JSON: {err}") from err


def read_token_file(path: str | os.PathLike | None) -> str | None:
    """The bearer token in the file at `path` (surrounding whitespace removed), None without a
    path. Raises FileAccessError when it cannot be read, ConfigError when it is empty (an empty
    token would let anyone in)."""
    if path is None:
        return None
    try:
        with open(path) as source:
            token = source.read().strip()
    except OSError as err:
        raise FileAccessError(f"cannot read token file {path}: {err.strerror}") from err
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token
