"""How the arrays of a layout feed a model: the one calling rule of training, export and serving.

Flat layout: ``forward(features)`` or, when forward takes a second positional argument,
``forward(features, mask)``. Collection layout: when every parameter of forward is the name of an
input ("features", "mask", "Jet", "Jet_mask", ...) the inputs are given by name; when forward
takes one parameter it gets a dict of all inputs; otherwise the inputs are given in order
(features, mask, then each collection and its mask).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any


def _positional(module: Any) -> tuple[list[str], bool]:
    """Names of forward's positional parameters and whether it takes *args."""
    parameters = inspect.signature(module.forward).parameters.values()
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names, any(p.kind == p.VAR_POSITIONAL for p in parameters)


def takes_mask(module: Any) -> bool:
    """Whether a flat-layout model's forward accepts the mask as a second argument."""
    names, var = _positional(module)
    return var or len(names) >= 2


def call_model(module: Any, layout_name: str, inputs: Mapping[str, Any], inner: Any = None) -> Any:
    """Run `module` on `inputs` (input name -> tensor, in layout order) by the calling rule of
    the module docstring, read from the signature of `inner` (the wrapped model of a DDP
    wrapper, whose own forward takes *args) or of `module` itself."""
    inner = module if inner is None else inner
    if layout_name == "flat":
        if takes_mask(inner):
            return module(inputs["features"], inputs["mask"])
        return module(inputs["features"])
    names, var = _positional(inner)
    keywords = [
        p.name
        for p in inspect.signature(inner.forward).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if not var and keywords and set(keywords) <= set(inputs) | _optional(inner):
        return module(**{k: inputs[k] for k in keywords if k in inputs})
    if not var and len(names) == 1:
        return module(dict(inputs))
    return module(*inputs.values())


def _optional(module: Any) -> set[str]:
    return {
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
