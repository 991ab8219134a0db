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
BadRequest naming the branch. Derived columns (aliases) are sent under their own names.

The preprocessing comes from the version's rootml.json (rootml.export.preprocessing, which
lists the keys read); the jagged convention ("X.counts") and `columns_to_inputs`, which makes
such inputs from awkward arrays, are rootml.protocol's, shared with the client.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from rootml.errors import BadRequest, BodyTooLarge, ModelError, RootmlError
from rootml.export.preprocessing import Preprocessing as Preprocessing
from rootml.export.preprocessing import model_feeds
from rootml.protocol import COUNTS_SUFFIX, DTYPES
from rootml.protocol import columns_to_inputs as columns_to_inputs
from rootml.serve.codec import InferInput, InferRequest, check_inputs, parse_infer_request

log = logging.getLogger(__name__)

# Model input values one raw-columns request may be padded to (rows x values per entry): 64M,
# 256 MiB of float32. A few bytes of request can ask for many padded rows; beyond this, 413.
MAX_PADDED_VALUES = 1 << 26


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
        self.row_values = 0  # model input values per entry
        try:
            self.row_values = prep.input_values(self.inputs)
        except ModelError as err:
            self.error = err

    def applies(self, request: InferRequest) -> bool:
        """Whether `request` names branches rather than model inputs."""
        names = {i.name for i in request.inputs}
        return not names & self._model_inputs and bool(names & self.accepted)

    def feeds(self, request: InferRequest, max_batch_size: int = 0) -> dict[str, np.ndarray]:
        """The model feeds for a raw-columns request. Raises BadRequest naming the
        branch (missing, unknown, wrong rank, shape, datatype or counts), ModelError when the
        model cannot take raw columns."""
        if self.error is not None:
            raise self.error
        given = _by_name(request.inputs)
        unknown = sorted(set(given) - self.accepted)
        if unknown:
            raise BadRequest(
                f"unknown input {unknown[0]!r}: neither a model input {sorted(self._model_inputs)}"
                f" nor a branch of the model's Specs {list(self.kinds)}"
            )
        chunk, rows = {}, None
        for name, kind in self.kinds.items():
            if name not in given:
                raise BadRequest(f"missing branch {name!r}; the model needs {list(self.kinds)}")
            values, n = self._column(name, kind, given)
            if rows is not None and n != rows:
                raise BadRequest(f"branch {name!r} has {n} entries, other branches {rows}")
            chunk[name], rows = values, n
        for name, _ in request.outputs or []:
            if name not in {t.name for t in self.outputs}:
                raise BadRequest(f"unknown output {name!r}")
        if max_batch_size > 0 and rows > max_batch_size:
            raise BadRequest(f"{rows} entries are more than max_batch_size {max_batch_size}")
        if rows * self.row_values > MAX_PADDED_VALUES:
            raise BodyTooLarge(
                f"{rows} entries of {self.row_values} model input values each are more than "
                f"{MAX_PADDED_VALUES} values: send fewer entries per request"
            )
        try:
            block = self._transform(chunk)
        except (RootmlError, ValueError, TypeError) as err:
            raise BadRequest(f"cannot turn the branches into model inputs: {err}") from None
        return model_feeds(block, self.inputs)

    def _column(self, name: str, kind: str, given: dict[str, InferInput]) -> tuple[Any, int]:
        item = given[name]
        what = f"branch {name!r}"
        if item.datatype == "BYTES":
            raise BadRequest(f"{what}: BYTES is not a number type")
        shape, array = item.shape, item.array
        if kind == "flat":
            if len(shape) != 1:
                raise BadRequest(f"{what} is flat: shape must be [B], not {list(shape)}")
            return array, shape[0]
        if kind == "fixed":
            width = self.widths[name]
            if len(shape) < 2 or math.prod(shape[1:]) != width:
                raise BadRequest(
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
                raise BadRequest(f"{what}: rows as lists and {name + COUNTS_SUFFIX!r} both given")
            if DTYPES[counts_input.datatype].kind not in "iu":
                raise BadRequest(f"{name + COUNTS_SUFFIX!r} must be integers")
            if len(counts_input.shape) != 1 or len(item.shape) != 1:
                raise BadRequest(
                    f"{what} with counts: shapes must be [N] and [B], not {list(item.shape)} "
                    f"and {list(counts_input.shape)}"
                )
            counts = counts_input.array.astype(np.int64)
            if counts.size and counts.min() < 0:
                raise BadRequest(f"{name + COUNTS_SUFFIX!r} holds negative counts")
        elif counts is None and len(item.shape) == 2:
            counts = np.full(item.shape[0], item.shape[1], dtype=np.int64)
            content = content.reshape(-1)
        elif counts is None and item.shape == (0,):
            counts = np.zeros(0, dtype=np.int64)
        elif counts is None:
            raise BadRequest(
                f"{what} is jagged: send a list per entry (JSON, shape [B]), or its items with "
                f"shape [N] and {name + COUNTS_SUFFIX!r} shape [B], or shape [B, K]; "
                f"got shape {list(item.shape)}"
            )
        total = int(counts.sum())
        if total != content.size:
            raise BadRequest(
                f"{what}: the counts add up to {total} items, but {content.size} are given"
            )
        # Imported here: a server whose models take no raw jagged columns never loads awkward
        # (~50 MB of RSS with the pyarrow it pulls in).
        import awkward as ak

        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        jagged = ak.contents.ListOffsetArray(
            ak.index.Index64(offsets), ak.contents.NumpyArray(np.ascontiguousarray(content))
        )
        return ak.Array(jagged), len(counts)


def _by_name(inputs: Sequence[InferInput]) -> dict[str, InferInput]:
    given: dict[str, InferInput] = {}
    for item in inputs:
        if item.name in given:
            raise BadRequest(f"input {item.name!r} given twice")
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
    BadRequest for a bad request, ModelError for a model that cannot take raw columns.
    """
    raw = raw_columns(served)
    request = parse_infer_request(body, header_length, raw.jagged if raw is not None else ())
    return request, request_feeds(served, request)


def request_feeds(served: Any, request: InferRequest) -> dict[str, np.ndarray]:
    """The feeds (model input name -> array) of a decoded request, from any front-end: its
    model inputs checked against the version's signature, or its raw branch columns through the
    version's preprocessing. Raises BadRequest, or ModelError for a model that cannot take raw
    columns."""
    raw = raw_columns(served)
    if raw is not None and raw.applies(request):
        return raw.feeds(request, served.max_batch_size)
    check_inputs(request, served.inputs, served.outputs, served.max_batch_size)
    return {i.name: i.array for i in request.inputs}
