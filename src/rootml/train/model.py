"""The user's model.py: imported by path, called with the arguments the inputs give it, and
checked on a batch of zeros before any training, so a mismatch is one line, not a traceback."""

from __future__ import annotations

import os
from typing import Any

import torch

from rootml._userfiles import import_function
from rootml.errors import ModelError
from rootml.transforms.collection import layout_parts
from rootml.transforms.feed import call_model


def load_model_factory(path: str | os.PathLike):
    """The `model` function of a user's model.py: model(idim) for the flat layout, model(inputs)
    for the collection layout. Raises UserCodeError (a FileAccessError and a ModelError) when the
    file is missing, does not import or defines no `model`."""
    return import_function(path, "model", "model file")


def model_arguments(train: Any) -> dict[str, Any]:
    """model(idim=F) for the flat layout; model(inputs=...) for the collection layout, inputs
    describing each part: {"features": F0, "Jet": [C, N], ...} (shapes without the batch)."""
    if train.layout.name == "flat":
        return {"idim": len(train.feature_names)}
    inputs = {}
    for array, _, branches in layout_parts(train.layout):
        if branches:
            width = len(branches)
            inputs[array] = width if array == "features" else [width, train.layout.lengths[array]]
    return {"inputs": inputs}


def build_model(
    model_file: str | os.PathLike,
    model_args: dict[str, Any],
    train: Any,
    classes: int | None = None,
):
    """The user's model(**model_args), checked on a zero batch of `train`'s shape (two rows,
    masks True) on the CPU in eval mode. Raises ModelError naming `model_file`, the arguments
    and the exception when building or running it fails, or its output is not (B,), (B, 1)
    probabilities or (B, C) logits for labels 0 .. `classes` - 1 (when known)."""
    factory = load_model_factory(model_file)
    call = f"{model_file}: model({', '.join(f'{k}={v}' for k, v in model_args.items())})"
    try:
        model = factory(**model_args)
    except Exception as err:  # the user's code: any failure is theirs to see, in one line
        raise ModelError(f"{call} fails: {type(err).__name__}: {err}") from err
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"{call} returns {type(model).__name__}, not a torch.nn.Module")
    layout = train.layout.name
    inputs = _zero_batch(train, model_args)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items() if "mask" not in k)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = call_model(model, layout, inputs)
    except Exception as err:  # shape mismatches are RuntimeErrors from inside the user's forward
        message = str(err).splitlines()[0] if str(err) else ""
        raise ModelError(
            f"{call} does not take a batch of {shapes}: {type(err).__name__}: {message}"
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or output.ndim not in (1, 2) or len(output) != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(
            f"{call} returns {shape} for a batch of 2: expected (2,) or (2, 1) probabilities "
            "or (2, C) logits"
        )
    width = 1 if output.ndim == 1 else output.shape[1]
    if classes is not None and classes > max(width, 2):
        what = "one probability" if width == 1 else f"{width} logits"
        raise ModelError(
            f"{call} returns {what} per entry, but the labels have {classes} classes "
            f"(0-{classes - 1}): return (B, {classes}) logits"
        )
    return model


def _zero_batch(train: Any, model_args: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Two entries of zeros in `train`'s layout (masks True), in the order the batches have."""
    shapes = model_args.get("inputs", {"features": model_args.get("idim")})
    batch = {}
    for array, mask, branches in layout_parts(train.layout):
        if branches:
            shape = shapes[array]
            dims = [shape] if isinstance(shape, int) else list(shape)
            batch[array] = torch.zeros(2, *dims)
            batch[mask] = torch.ones(2, dims[-1], dtype=torch.bool)
    return batch
