"""Parity at export: onnxruntime against torch on the same inputs, from the training data when it
is still reachable, from the Specs' ranges otherwise.

Batches are "raw" blocks as the dataset yields them without normalisation (numpy, input name ->
array): the torch reference always gets them normalised as in training; the ONNX graph gets them
normalised too, or raw when the normalisation is folded into it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np

from rootml import defaults
from rootml.errors import ModelError, RootmlError
from rootml.export.checkpoint import TrainedRun
from rootml.transforms.feed import call_model

log = logging.getLogger(__name__)

# Dataset settings of the training run that change the values a model sees (passed on when both
# the run's params and this RootIterableDataset know them).
_VALUE_PARAMS = ("preprocess", "sort_by", "nan_policy", "redirector")


@dataclass
class ParityBatches:
    """Raw input blocks (input name -> array, batch first) and where they came from.

    source: "training data" or "random"; reason: why random inputs were used.
    """

    blocks: list[dict[str, np.ndarray]]
    source: str
    reason: str | None = None

    @property
    def rows(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.blocks)


def parity_batches(
    run: TrainedRun,
    batches: int = defaults.PARITY_BATCHES,
    batch_size: int = defaults.PARITY_BATCH_SIZE,
) -> ParityBatches:
    """`batches` batches of the run's training data (shuffle off, no normalisation), read again
    with the files, tree, branches, cut and aliases its Specs were fitted on; random inputs drawn
    from the Specs' ranges when those files cannot be read (the reason is kept)."""
    try:
        blocks = list(_training_blocks(run, batches, batch_size))
    except RootmlError as err:
        reason = f"training data not readable: {err}"
    else:
        if blocks:
            return ParityBatches(blocks, "training data")
        reason = "training data gave no entries"
    log.warning("parity check on random inputs from the Specs' ranges: %s", reason)
    return ParityBatches(random_blocks(run, batches, batch_size), "random", reason)


def _training_blocks(run: TrainedRun, batches: int, batch_size: int) -> Iterator[dict]:
    from rootml.datasets import RootIterableDataset, Selection

    fingerprint = run.specs.fingerprint
    if not fingerprint.get("files"):
        raise RootmlError("the Specs do not name the files they were fitted on")
    accepted = {*inspect.signature(RootIterableDataset).parameters, *Selection.FIELDS}
    options: dict[str, Any] = {
        key: run.params[key] for key in _VALUE_PARAMS if key in accepted and key in run.params
    }
    ds = RootIterableDataset(
        fingerprint["files"],
        tree=fingerprint.get("tree"),
        branches=fingerprint.get("branches"),
        cut=fingerprint.get("cut"),
        aliases=fingerprint.get("aliases"),
        batch_size=batch_size,
        chunk_size=max(batch_size * batches, 1000),
        shuffle=False,
        pad_value=run.pad_value,
        nevts=batch_size * batches,
        specs=run.specs,
        reuse_specs=True,
        retries=1,
        layout=run.layout,  # the layout object, so a run's own collections are kept
        **options,
    )
    keys = [name for key, mask_key, _ in run.parts for name in (key, mask_key)]
    for i, batch in enumerate(ds):
        if i >= batches:
            break
        yield {key: batch[key].numpy() for key in keys}


def random_blocks(
    run: TrainedRun,
    batches: int = defaults.PARITY_BATCHES,
    batch_size: int = defaults.PARITY_BATCH_SIZE,
) -> list[dict]:
    """Raw blocks from a random chunk pushed through the run's layout: every value uniform in
    its branch's [min, max], multiplicities drawn from each branch's multiplicity histogram (one
    draw per collection, so its branches agree), NaN-free. Seeded: the same run gives the same
    blocks."""
    rng = np.random.default_rng(0)
    n = batches * batch_size
    counts: dict[str, np.ndarray] = {}
    chunk: dict[str, Any] = {}
    for name, spec in run.specs.branches.items():
        finite = spec.count and np.isfinite([spec.min, spec.max]).all()
        lo, hi = (spec.min, spec.max) if finite else (-1.0, 1.0)
        if spec.kind == "jagged":
            group = spec.collection or name
            if group not in counts:
                counts[group] = _multiplicities(spec.multiplicity, n, rng)
            values = rng.uniform(lo, hi, int(counts[group].sum())).astype(np.float32)
            chunk[name] = ak.unflatten(values, counts[group])
        else:
            shape = (n,) if spec.kind == "flat" else (n, spec.width)
            chunk[name] = rng.uniform(lo, hi, shape).astype(np.float32)
    block = run.layout(chunk)
    keys = [name for key, mask_key, _ in run.parts for name in (key, mask_key)]
    return [
        {key: block[key][i * batch_size : (i + 1) * batch_size] for key in keys}
        for i in range(batches)
    ]


def _multiplicities(histogram: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` item counts drawn from a multiplicity histogram (one item each when it is empty)."""
    weights = np.asarray(histogram, dtype=np.float64)
    if not weights.sum():
        return np.ones(n, dtype=np.int64)
    return rng.choice(len(weights), size=n, p=weights / weights.sum())


def max_abs_diff(reference: np.ndarray, other: np.ndarray) -> float:
    """Largest |reference - other|; NaN or inf in the same place with the same value count as
    equal, anywhere else as an infinite difference. Shapes must match (ModelError)."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape:
        raise ModelError(f"ONNX output shape {other.shape} differs from torch's {reference.shape}")
    same = (reference == other) | (np.isnan(reference) & np.isnan(other))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(reference - other))
    diff[np.isnan(diff)] = np.inf
    return float(diff.max(initial=0.0))


def compare(
    run: TrainedRun,
    onnx_bytes: bytes,
    blocks: Sequence[Mapping[str, np.ndarray]],
    folded: bool,
    members: Sequence[TrainedRun] | None = None,
) -> float:
    """Max absolute difference between onnxruntime on `onnx_bytes` and the torch model in eval
    mode, over `blocks` (raw). The torch model gets the inputs normalised by
    rootml.transforms.Normalize as in training; the graph gets them raw when `folded`. With
    `members` (a k-fold ensemble; blocks hold "fold"), row i's reference is the output of
    member fold[i] % len(members)."""
    import onnxruntime as ort

    from rootml.export.execution import session_options

    session = ort.InferenceSession(
        onnx_bytes, sess_options=session_options(1), providers=["CPUExecutionProvider"]
    )
    graph_inputs = [i.name for i in session.get_inputs()]
    normalize = run.pipeline().normalize
    worst = 0.0
    for raw in blocks:
        normalised = normalize(dict(raw)) if normalize is not None else dict(raw)
        fed = raw if folded else normalised
        unknown = [n for n in graph_inputs if n not in fed]
        if unknown:
            raise ModelError(f"the exported graph has inputs {unknown} that the layout lacks")
        (got, *_) = session.run(None, {n: np.ascontiguousarray(fed[n]) for n in graph_inputs})
        if members is None:
            expected = reference(run, normalised)
        else:
            inputs = {k: v for k, v in normalised.items() if k != "fold"}
            each = np.stack([reference(member, inputs) for member in members])
            pick = np.remainder(normalised["fold"], len(members))
            expected = each[pick, np.arange(len(pick))]
        worst = max(worst, max_abs_diff(expected, got))
    return worst


def reference(run: TrainedRun, normalised: Mapping[str, np.ndarray]) -> np.ndarray:
    """The torch model's output (eval mode, in the targets' units for a regression) on
    normalised inputs."""
    import torch

    from rootml.export.graph import affine_output

    inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in normalised.items()}
    with torch.no_grad():
        expected = call_model(run.module.eval(), run.layout_name, inputs)
        if isinstance(expected, (tuple, list)):
            expected = expected[0]
        if run.output_affine is not None:
            scale, offset = (torch.tensor(v, dtype=torch.float32) for v in run.output_affine)
            expected = affine_output(expected, scale, offset)
    return expected.detach().numpy()
