"""The user's model.py: imported by path, called with the arguments the inputs give it, and
checked on a batch of zeros before any training, so a mismatch is one line, not a traceback."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from rootml._userfiles import import_function
from rootml.errors import ConfigError, ModelError
from rootml.transforms.collection import layout_parts
from rootml.transforms.feed import call_model

log = logging.getLogger(__name__)


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
    outputs: int | None = None,
):
    """The user's model(**model_args), checked on a zero batch of `train`'s shape (two rows,
    masks True) on the CPU in eval mode. Raises ModelError naming `model_file`, the arguments
    and the exception when building or running it fails, or its output is not (B,), (B, 1)
    probabilities or (B, C) logits for labels 0 .. `classes` - 1 (when known), or, for a
    regression (`outputs` given), not (B, outputs) values ((B,) for one)."""
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
    if outputs is not None:
        if width != outputs:
            raise ModelError(
                f"{call} returns {width} value(s) per entry; the regression needs {outputs} "
                "(one per target; gaussian_nll: a mean and a log variance per target)"
            )
        return model
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


def init_from(model: torch.nn.Module, source: str | os.PathLike) -> list[str]:
    """Load the weights of an earlier run into `model` (fine-tuning): `source` is a run folder
    (its checkpoints/best.pt when it stopped early, else checkpoint.pt) or a checkpoint file.
    Parameters and buffers are matched by name; the model's names the source lacks keep their
    initial values and are returned (logged). Raises ModelError for an unreadable source, a
    shape that differs, or a source that shares no name with the model."""
    from rootml.runfolder import CheckpointKey, load_checkpoint, run_checkpoint, unwrapped_state

    path = run_checkpoint(source)
    state = unwrapped_state(load_checkpoint(path)[CheckpointKey.MODEL_STATE])
    own = model.state_dict()
    shared = [name for name in own if name in state]
    if not shared:
        raise ModelError(
            f"init_from {path}: none of its {len(state)} weights has a name of this model's "
            f"({', '.join(list(own)[:4])}, ...)"
        )
    for name in shared:
        if tuple(state[name].shape) != tuple(own[name].shape):
            raise ModelError(
                f"init_from {path}: {name} has shape {tuple(state[name].shape)} there and "
                f"{tuple(own[name].shape)} in this model"
            )
    model.load_state_dict({name: state[name] for name in shared}, strict=False)
    missing = [name for name in own if name not in state]
    log.info("init_from %s: %d weights loaded, %d kept as initialised %s", path, len(shared),
             len(missing), missing[:8])  # fmt: skip
    return missing


def freeze(model: torch.nn.Module, patterns: list[str] | None) -> list[str]:
    """Set requires_grad False on the parameters whose names match one of `patterns` (fnmatch
    globs: "0.*", "encoder.*", "*.bias"); returns their names. The optimiser then leaves them
    unchanged (BatchNorm running statistics are buffers, not parameters: they still follow the
    data in training mode). Raises ConfigError for a pattern that matches no parameter."""
    import fnmatch

    if not patterns:
        return []
    names = [name for name, _ in model.named_parameters()]
    frozen = []
    for pattern in patterns:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            raise ConfigError(f"freeze pattern {pattern!r} matches no parameter of the model; its parameters: {names[:12]}")  # fmt: skip
        frozen += matched
    frozen = list(dict.fromkeys(frozen))
    if len(frozen) == len(names):
        raise ConfigError(f"freeze {patterns} matches every parameter of the model: nothing would train")  # fmt: skip
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return frozen
