"""Physics in: infer requests that name ROOT branches instead of model inputs.

A model whose rootml.json holds "specs" can be sent the raw columns of events, named as the
branches it was trained on. The server then applies what training applied, with the same
transforms: sort_by, the layout's padding and mask (`FlatLayout`, or the collection layout), the
NaN policy, and `Normalize` unless rootml.json says the normalisation is folded into the graph.
A request is taken as raw columns when none of its inputs is a model input and some are branches.

Request conventions (V2 JSON or the binary extension; B = entries in the request):
- a flat branch (one number per entry), e.g. "MET_px": shape [B], any numeric datatype;
- a fixed-size array branch of W values: shape [B, W] (or [B, d1, d2] with d1 * d2 = W);
- a jagged branch (a variable number of items per entry), e.g. "Jet_Px", one of:
  - JSON only: shape [B] and "data" a list of B lists, [[10.5, 3.2], [], [7.0]];
  - "Jet_Px" shape [N], the items of all entries one after the other, plus "Jet_Px.counts",
    any integer datatype, shape [B], the items per entry (as ROOT's counter branch, e.g. NJet),
    summing to N. This is the way for binary requests (tritonclient's default);
  - shape [B, K]: every entry has K items.
Every branch of the Specs (and a sort_by key branch) must be given, and nothing else; errors are
ProtocolError(400) naming the branch. Derived columns (aliases) are sent under their own names.

rootml.json keys read (see rootml.export.repository): "specs", "layout" ("flat" by default),
"collections" (collection layout: name -> {"branches": [...]}), "pad_value" (0.0),
"normalization": {"method": "standard"|"minmax"|null, "folded": bool}, "sort_by" and
"nan_policy" (top-level, else from "training": {"params": ...}).
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np

from rootml.errors import ModelError, ProtocolError, RootmlError
from rootml.export.metadata import check_metadata
from rootml.serve.codec import DTYPES, InferInput, InferRequest, check_inputs, parse_infer_request
from rootml.transforms import (
    CollectionLayout,
    Compose,
    NonFinite,
    Normalize,
    SortBy,
    Specs,
    jagged_parts,
    make_layout,
    parse_sort_key,
)

log = logging.getLogger(__name__)

COUNTS_SUFFIX = ".counts"
# Model input values one raw-columns request may be padded to (rows x values per entry): 64M,
# 256 MiB of float32. A few bytes of request can ask for many padded rows; beyond this, 413.
MAX_PADDED_VALUES = 1 << 26


@dataclass
class Preprocessing:
    """What training did to a chunk of branches before the model, as rootml.json records it.

    normalize: the method to apply here (None when there is none or the graph does it itself).
    """

    specs: Specs
    layout: str = "flat"
    pad_value: float = 0.0
    normalize: str | None = None
    collections: dict[str, list[str]] | None = None
    sort_by: dict[str, Any] | None = None
    nan_policy: str = "keep"
    _layout: Any = field(default=None, repr=False)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None, model: str) -> Preprocessing:
        """The preprocessing of a model from its rootml.json. Raises ModelError when it has no
        "specs", or they cannot be read or ask for too much (`check_metadata`)."""
        if not metadata or not metadata.get("specs"):
            raise ModelError(
                f"model {model!r} has no Specs in its rootml.json: it takes model inputs only"
            )
        check_metadata(metadata, f"rootml.json of model {model!r}")
        try:
            specs = Specs.from_dict(metadata["specs"])
            normalization = metadata.get("normalization") or {}
            collections = metadata.get("collections")
            # sort_by and nan_policy: top-level keys, else the training parameters exported.
            params = (metadata.get("training") or {}).get("params") or {}
            sort_by = metadata.get("sort_by", params.get("sort_by"))
            nan_policy = metadata.get("nan_policy", params.get("nan_policy"))
            prep = cls(
                specs,
                metadata.get("layout") or "flat",
                float(metadata.get("pad_value") or 0.0),
                None if normalization.get("folded") else normalization.get("method"),
                {k: list(v["branches"]) for k, v in collections.items()} if collections else None,
                dict(sort_by) if sort_by else None,
                nan_policy or "keep",
            )
            prep._layout = (
                CollectionLayout(specs, prep.pad_value, prep.collections)
                if prep.layout == "collection"
                else make_layout(specs, prep.layout, prep.pad_value)
            )
        except (RootmlError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise ModelError(
                f"model {model!r}: cannot use the Specs of its rootml.json: {err}"
            ) from err
        return prep

    @property
    def layout_object(self) -> Any:
        """The FlatLayout or CollectionLayout of these Specs."""
        return self._layout

    def branches(self) -> dict[str, str]:
        """Branch -> kind ("flat", "fixed", "jagged") of every column a chunk needs: the Specs'
        branches, then sort_by keys that are not features (jagged)."""
        kinds = {name: spec.kind for name, spec in self.specs.branches.items()}
        for key in (self.sort_by or {}).values():
            kinds.setdefault(parse_sort_key(key)[0], "jagged")
        return kinds

    def dataset_options(self) -> dict[str, Any]:
        """Arguments of RootIterableDataset that read and transform as training did."""
        return {
            "branches": list(self.specs.branches),
            "aliases": self.specs.fingerprint.get("aliases") or None,
            "specs": self.specs,
            "reuse_specs": True,
            "pad_value": self.pad_value,
            "normalize": self.normalize,
            "layout": self._layout,
            "sort_by": self.sort_by,
            "nan_policy": self.nan_policy,
        }

    def transform(self) -> Compose:
        """chunk (branch -> array of n entries) -> block of numpy arrays ("features", "mask", ...)."""
        steps: list[Any] = [SortBy(self.sort_by, self.specs)] if self.sort_by else []
        steps += [self._layout, NonFinite(self._layout, self.nan_policy, self.pad_value)]
        if self.normalize:
            steps.append(Normalize(self.specs, self.normalize, self.pad_value, self._layout))
        return Compose(steps)


def model_feeds(block: Mapping[str, Any], inputs: Sequence[Any]) -> dict[str, np.ndarray]:
    """The model's inputs (TensorSpecs) taken by name from a transformed block, in their dtypes.

    Raises ModelError when the block has no array for an input.
    """
    missing = [t.name for t in inputs if t.name not in block]
    if missing:
        made = sorted(k for k in block if k != "stats")
        raise ModelError(f"the model takes inputs {missing} that its layout does not make ({made})")
    return {t.name: np.asarray(block[t.name], dtype=DTYPES[t.datatype]) for t in inputs}


def columns_to_inputs(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Raw columns (branch -> numpy or awkward array of B entries) as request inputs: jagged
    awkward arrays become content "X" (N,) and "X.counts" (B,) int64; others numpy as they are."""
    inputs = {}
    for name, values in columns.items():
        if isinstance(values, ak.Array) and values.ndim > 1 and not _regular(values):
            counts, content = jagged_parts(values)
            inputs[name], inputs[name + COUNTS_SUFFIX] = np.asarray(content), counts
        else:
            inputs[name] = values if isinstance(values, np.ndarray) else ak.to_numpy(values)
    return inputs


def _regular(values: ak.Array) -> bool:
    return isinstance(values.type.content, ak.types.RegularType)


class RawColumns:
    """Raw branch columns of requests -> the feeds of one model version.

    `jagged` names the inputs the codec may decode as ragged JSON. The layout's output shapes are
    checked against the model's fixed dims once, here; a mismatch makes every raw request fail
    with that error (the model still serves its own inputs).
    """

    def __init__(self, prep: Preprocessing, inputs: Sequence[Any], outputs: Sequence[Any]):
        self.prep, self.inputs, self.outputs = prep, list(inputs), list(outputs)
        self.kinds = prep.branches()
        self.widths = {n: s.width for n, s in prep.specs.branches.items()}
        self.jagged = frozenset(n for n, k in self.kinds.items() if k == "jagged")
        self.accepted = set(self.kinds) | {n + COUNTS_SUFFIX for n in self.jagged}
        self._model_inputs = {t.name for t in self.inputs}
        self._transform = prep.transform()
        self.error: ModelError | None = None
        self.row_values = 0  # model input values per entry, from _check_shapes
        try:
            self._check_shapes()
        except (ModelError, ValueError, KeyError, TypeError) as err:
            self.error = ModelError(f"raw columns cannot feed this model: {err}")

    def applies(self, request: InferRequest) -> bool:
        """Whether `request` names branches rather than model inputs."""
        names = {i.name for i in request.inputs}
        return not names & self._model_inputs and bool(names & self.accepted)

    def feeds(self, request: InferRequest, max_batch_size: int = 0) -> dict[str, np.ndarray]:
        """The model feeds for a raw-columns request. Raises ProtocolError(400) naming the
        branch (missing, unknown, wrong rank, shape, datatype or counts), ModelError when the
        model cannot take raw columns."""
        if self.error is not None:
            raise self.error
        given = _by_name(request.inputs)
        unknown = sorted(set(given) - self.accepted)
        if unknown:
            raise ProtocolError(
                f"unknown input {unknown[0]!r}: neither a model input {sorted(self._model_inputs)}"
                f" nor a branch of the model's Specs {list(self.kinds)}"
            )
        chunk, rows = {}, None
        for name, kind in self.kinds.items():
            if name not in given:
                raise ProtocolError(f"missing branch {name!r}; the model needs {list(self.kinds)}")
            values, n = self._column(name, kind, given)
            if rows is not None and n != rows:
                raise ProtocolError(f"branch {name!r} has {n} entries, other branches {rows}")
            chunk[name], rows = values, n
        for name, _ in request.outputs or []:
            if name not in {t.name for t in self.outputs}:
                raise ProtocolError(f"unknown output {name!r}")
        if max_batch_size > 0 and rows > max_batch_size:
            raise ProtocolError(f"{rows} entries are more than max_batch_size {max_batch_size}")
        if rows * self.row_values > MAX_PADDED_VALUES:
            raise ProtocolError(
                f"{rows} entries of {self.row_values} model input values each are more than "
                f"{MAX_PADDED_VALUES} values: send fewer entries per request",
                413,
            )
        try:
            block = self._transform(chunk)
        except (RootmlError, ValueError, TypeError) as err:
            raise ProtocolError(f"cannot turn the branches into model inputs: {err}") from None
        return model_feeds(block, self.inputs)

    def _column(self, name: str, kind: str, given: dict[str, InferInput]) -> tuple[Any, int]:
        item = given[name]
        what = f"branch {name!r}"
        if item.datatype == "BYTES":
            raise ProtocolError(f"{what}: BYTES is not a number type")
        shape, array = item.shape, item.array
        if kind == "flat":
            if len(shape) != 1:
                raise ProtocolError(f"{what} is flat: shape must be [B], not {list(shape)}")
            return array, shape[0]
        if kind == "fixed":
            width = self.widths[name]
            if len(shape) < 2 or math.prod(shape[1:]) != width:
                raise ProtocolError(
                    f"{what} holds {width} values per entry: shape must be [B, {width}], "
                    f"not {list(shape)}"
                )
            return array.reshape(shape[0], width), shape[0]
        return self._jagged(name, item, given.get(name + COUNTS_SUFFIX))

    @staticmethod
    def _jagged(name: str, item: InferInput, counts_input: InferInput | None) -> tuple[Any, int]:
        what = f"branch {name!r}"
        counts, content = item.counts, item.array
        if counts_input is not None:
            if counts is not None:
                raise ProtocolError(
                    f"{what}: rows as lists and {name + COUNTS_SUFFIX!r} both given"
                )
            if DTYPES[counts_input.datatype].kind not in "iu":
                raise ProtocolError(f"{name + COUNTS_SUFFIX!r} must be integers")
            if len(counts_input.shape) != 1 or len(item.shape) != 1:
                raise ProtocolError(
                    f"{what} with counts: shapes must be [N] and [B], not {list(item.shape)} "
                    f"and {list(counts_input.shape)}"
                )
            counts = counts_input.array.astype(np.int64)
            if counts.size and counts.min() < 0:
                raise ProtocolError(f"{name + COUNTS_SUFFIX!r} holds negative counts")
        elif counts is None and len(item.shape) == 2:
            counts = np.full(item.shape[0], item.shape[1], dtype=np.int64)
            content = content.reshape(-1)
        elif counts is None and item.shape == (0,):
            counts = np.zeros(0, dtype=np.int64)
        elif counts is None:
            raise ProtocolError(
                f"{what} is jagged: send a list per entry (JSON, shape [B]), or its items with "
                f"shape [N] and {name + COUNTS_SUFFIX!r} shape [B], or shape [B, K]; "
                f"got shape {list(item.shape)}"
            )
        total = int(counts.sum())
        if total != content.size:
            raise ProtocolError(
                f"{what}: the counts add up to {total} items, but {content.size} are given"
            )
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        jagged = ak.contents.ListOffsetArray(
            ak.index.Index64(offsets), ak.contents.NumpyArray(np.ascontiguousarray(content))
        )
        return ak.Array(jagged), len(counts)

    def _check_shapes(self) -> None:
        empty: dict[str, Any] = {}
        for name, kind in self.kinds.items():
            if kind == "jagged":
                empty[name] = ak.Array(
                    ak.contents.ListOffsetArray(
                        ak.index.Index64(np.zeros(1, dtype=np.int64)),
                        ak.contents.NumpyArray(np.zeros(0, dtype=np.float32)),
                    )
                )
            else:
                empty[name] = np.zeros((0,) if kind == "flat" else (0, self.widths[name]))
        block = self._transform(empty)
        for name, array in model_feeds(block, self.inputs).items():
            spec = next(t for t in self.inputs if t.name == name)
            dims = array.shape[1:]
            self.row_values += math.prod(dims)
            if len(spec.shape) != array.ndim or any(
                want != -1 and want != got for want, got in zip(spec.shape[1:], dims)
            ):
                raise ModelError(
                    f"the layout makes {name!r} of shape {[-1, *dims]}, the model takes "
                    f"{list(spec.shape)}"
                )


def _by_name(inputs: Sequence[InferInput]) -> dict[str, InferInput]:
    given: dict[str, InferInput] = {}
    for item in inputs:
        if item.name in given:
            raise ProtocolError(f"input {item.name!r} given twice")
        given[item.name] = item
    return given


# RawColumns per loaded model version, built on first use (the version object is the key, so a
# reload gets its own and a retired version's entry goes with it).
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()
_UNSET = object()


def raw_columns(served: Any) -> RawColumns | None:
    """The RawColumns of a served version (rootml.serve.models.ServedVersion), or None when its
    rootml.json has no usable Specs."""
    cached = _CACHE.get(served, _UNSET)  # a read needs no lock: only building does
    if cached is not _UNSET:
        return cached
    raw = None
    if served.metadata and served.metadata.get("specs"):
        try:
            prep = Preprocessing.from_metadata(served.metadata, served.name)
            raw = RawColumns(prep, served.inputs, served.outputs)
        except ModelError as err:
            log.warning("model %s version %s: %s", served.name, served.version, err)
    with _CACHE_LOCK:
        _CACHE[served] = raw
    return raw


def decode_infer(
    served: Any, body: bytes, header_length: str | int | None = None
) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """Decode an infer body for a served version: (request, feeds by model input name).

    Inputs named as the model's inputs are checked against its signature and passed as they are;
    inputs named as the branches of its Specs go through the model's preprocessing. Raises
    ProtocolError(400) for a bad request, ModelError for a model that cannot take raw columns.
    """
    raw = raw_columns(served)
    request = parse_infer_request(body, header_length, raw.jagged if raw is not None else ())
    if raw is not None and raw.applies(request):
        return request, raw.feeds(request, served.max_batch_size)
    check_inputs(request, served.inputs, served.outputs, served.max_batch_size)
    return request, {i.name: i.array for i in request.inputs}
