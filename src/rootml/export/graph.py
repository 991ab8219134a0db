"""torch -> ONNX for a trained run: named inputs per layout part, a dynamic batch axis, and the
normalisation optionally folded into the graph."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from rootml import defaults
from rootml.errors import ModelError
from rootml.export.checkpoint import TrainedRun
from rootml.export.folds import FOLD_INPUT
from rootml.transforms import Normalize
from rootml.transforms.collection import layout_parts
from rootml.transforms.feed import call_model
from rootml.transforms.normalize import split_offset

OUTPUT_NAME = "score"
DEFAULT_OPSET = defaults.ONNX_OPSET


def input_names(run: TrainedRun) -> list[str]:
    """Every input the layout provides, in order: "features", "mask", then "<K>", "<K>_mask" per
    collection. The exported graph keeps those the model (or the folded normalisation) uses."""
    return [name for key, mask_key, _ in run.parts for name in (key, mask_key)]


def fold_parameters(
    run: TrainedRun,
) -> dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per array key: (mask key, offset high part, offset low part, scale) as float32, shaped as
    one row of the array: (F,) for "features", (C, 1) for a collection's (C, N) rows.

    The values are those of rootml.transforms.Normalize (its flat-layout offset/scale per column,
    a branch's shared by all its columns, the offset split by `split_offset`), so the folded
    graph computes what training fed the model, to the bit. Raises ModelError when the run was
    trained without normalisation.
    """
    if run.normalize is None:
        raise ModelError(
            f"{run.checkpoint_path}: the model was trained without normalisation; "
            "there is nothing to fold"
        )
    flat = Normalize(run.specs, run.normalize, run.pad_value, "flat")
    columns = layout_parts(flat.layout)[0][2]
    per_branch = {b: (o, s) for b, o, s in zip(columns, flat.offset, flat.scale)}
    folded = {}
    for key, mask_key, branches in run.parts:
        offset = np.asarray([per_branch[b][0] for b in branches], dtype=np.float64)
        scale = np.asarray([per_branch[b][1] for b in branches], dtype=np.float32)
        if key != "features":
            offset, scale = offset[:, None], scale[:, None]
        folded[key] = (mask_key, *split_offset(offset), scale)
    return folded


class ExportedModel(torch.nn.Module):
    """The trained model behind named positional inputs, as the ONNX graph sees it.

    With `fold` (from `fold_parameters`), each array is normalised first,
    x' = ((x - offset_high) - offset_low) / scale where its mask is True and `pad_value` where
    False, so the graph takes raw physics values. With `affine` ((scale, offset) per output
    column, TrainedRun.output_affine), the output is output x scale + offset: a regression
    model trained on standardised targets gives values in the targets' units.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        layout_name: str,
        names: Sequence[str],
        fold: Mapping[str, tuple[str, np.ndarray, np.ndarray, np.ndarray]] | None = None,
        pad_value: float = 0.0,
        affine: tuple[Sequence[float], Sequence[float]] | None = None,
    ):
        super().__init__()
        self.model, self.layout_name, self.names = model, layout_name, list(names)
        self.pad_value = float(pad_value)
        self.fold_masks: dict[str, str] = {}
        for key, (mask_key, high, low, scale) in (fold or {}).items():
            self.register_buffer(f"offset_{key}", torch.from_numpy(high.copy()))
            self.register_buffer(f"offset_low_{key}", torch.from_numpy(low.copy()))
            self.register_buffer(f"scale_{key}", torch.from_numpy(scale.copy()))
            self.fold_masks[key] = mask_key
        self.affine = affine is not None
        if affine is not None:
            self.register_buffer("out_scale", torch.tensor(affine[0], dtype=torch.float32))
            self.register_buffer("out_offset", torch.tensor(affine[1], dtype=torch.float32))

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.names, tensors))
        for key, mask_key in self.fold_masks.items():
            values = inputs[key] - getattr(self, f"offset_{key}")
            values = (values - getattr(self, f"offset_low_{key}")) / getattr(self, f"scale_{key}")
            mask = inputs[mask_key]
            if values.dim() == 3:  # (B, C, N) values, (B, N) mask
                mask = mask.unsqueeze(1)
            pad = torch.full((), self.pad_value, dtype=values.dtype)
            inputs[key] = torch.where(mask, values, pad)
        output = call_model(self.model, self.layout_name, inputs)
        return affine_output(output, self.out_scale, self.out_offset) if self.affine else output


def affine_output(output: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """output x scale + offset per column; a (B,) output is one column."""
    if output.dim() == 1:
        return output * scale[0] + offset[0]
    return output * scale + offset


def to_onnx(
    module: ExportedModel, example: Mapping[str, np.ndarray], opset: int = DEFAULT_OPSET
) -> bytes:
    """The ONNX bytes of `module` traced on `example` (input name -> array, batch first).

    The TorchScript exporter (dynamo=False): it needs no onnxscript and handles the plain
    torch.nn models rootml trains. Every input and the output "score" get a dynamic batch axis;
    inputs the traced graph does not use are dropped by the exporter. Raises ModelError.
    """
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n])) for n in module.names)
    axes = {name: {0: "batch"} for name in [*module.names, OUTPUT_NAME]}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The exporter announces its own deprecation on every call; nothing to act on here.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.onnx.export(
                module.eval(),
                args,
                buffer,
                input_names=list(module.names),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=int(opset),
                dynamo=False,
            )
    except Exception as err:
        raise ModelError(f"torch.onnx.export failed (opset {opset}): {err}") from err
    return buffer.getvalue()


class FoldEnsemble(torch.nn.Module):
    """Per entry, the output of the fold model (fold % n_folds): the graph of a k-fold
    ensemble (rootml.export.folds), its last input "fold" (B,) int64."""

    def __init__(self, members: list[ExportedModel]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.names = [*members[0].names, FOLD_INPUT]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        *inputs, fold = tensors
        index = torch.remainder(fold.long(), len(self.members))
        output = self.members[0](*inputs)
        # Where over unsqueezed indices, not a gather over stacked outputs: ONNX's shape
        # inference then keeps the members' output shape, (batch, 1) say, for config.pbtxt.
        for _ in range(output.dim() - 1):
            index = index.unsqueeze(-1)
        for k, member in enumerate(self.members[1:], 1):
            output = torch.where(index == k, member(*inputs), output)
        return output


def build_ensemble(runs: list[TrainedRun], fold_normalization: bool, example, opset: int) -> bytes:
    """The ONNX bytes of the ensemble of `runs`, traced on `example` (with a "fold" array)."""
    names = input_names(runs[0])
    members = [
        ExportedModel(run.module, run.layout_name, names,
                      fold_parameters(run) if fold_normalization else None, run.pad_value,
                      run.output_affine)
        for run in runs
    ]  # fmt: skip
    return to_onnx(FoldEnsemble(members), example, opset)
