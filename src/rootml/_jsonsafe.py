"""Values as strict JSON (RFC 8259 has no NaN or Infinity): what rootml writes for other
programs to read (rootml.json, specs.json) goes through `finite_json` first."""

from __future__ import annotations

import math
from typing import Any


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf) replaced by None, numpy scalars and arrays
    and torch tensors made plain Python (``tolist()``), tuples made lists, and anything else
    JSON cannot hold made its str(); dicts and lists are walked (new containers)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return finite_json(value.tolist())
    return str(value)
