"""Scores of awkward arrays: an exported model with its Specs inside a columnar analysis.

```python
import dask_awkward as dak
import uproot
from rootml.predict import ArrayScorer

scorer = ArrayScorer("models/tth")                  # or "http://host:8000/tth" (served)
events = uproot.dask({"ttH.root": "Events"}, step_size=100_000)
scores = dak.map_partitions(scorer, events)         # lazy; reads only scorer.columns
events["nn"] = scores.score                         # equal to `rootml predict`'s friend branch
```
The scorer takes an awkward array of records (or a dict branch -> array) holding the branches
the model was trained on, applies the version's preprocessing from its rootml.json
(rootml.export.preprocessing: sort_by, padding and mask, NaN policy, normalisation) and runs the
model in batches. It returns records with one field per model output, named as `rootml predict`
names its branches ("score" for one output). On a dask-awkward typetracer it only says which
columns it reads and what it returns, so column projection reads no other branch.

It pickles without its model: each process that scores opens the pinned version once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import awkward as ak
import numpy as np

from rootml.errors import DataValueError, SchemaError, closest
from rootml.export.preprocessing import model_feeds
from rootml.predict.run import _column, check_model, open_model
from rootml.predict.writers import empty_scores


class ArrayScorer:
    """model: as rootml.predict.predict ("models/NAME[/N]" or a served model URL); its version
    is pinned here. branch_name: as predict. batch_size: entries per model run (at most the
    model's max_batch_size). threads: onnxruntime threads per process. `columns`: the
    branches it reads. Raises ModelError (no Specs, layout and model disagree)."""

    def __init__(
        self,
        model: str,
        *,
        branch_name: str | None = None,
        batch_size: int = 1024,
        threads: int = 1,
        token: str | None = None,
    ):
        runner = open_model(model, threads, token)
        try:
            self.prep, self.names = check_model(runner, branch_name)
            self.model, self.inputs, self.outputs = runner.pinned, runner.inputs, runner.outputs
            if runner.max_batch_size > 0:
                batch_size = min(batch_size, runner.max_batch_size)
        finally:
            runner.close()
        self.batch_size, self.threads, self.token = max(int(batch_size), 1), threads, token
        self.columns = list(self.prep.branches())
        self._runner: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ArrayScorer({self.model!r}, columns={self.columns}, outputs={list(self.names.values())})"  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_runner", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _runner=None, _lock=threading.Lock())

    def __call__(self, events: Any) -> ak.Array:
        """events: records (or a dict) with `columns`, n entries -> records of n scores."""
        chunk = self._columns(events)
        if any(ak.backend(v) == "typetracer" for v in chunk.values()):
            for array in chunk.values():
                ak.typetracer.touch_data(array)
            meta = ak.Array(empty_scores(self.names, self.outputs))
            return ak.Array(meta.layout.to_typetracer(forget_length=True))
        try:
            block = self.prep.transform()(chunk)
        except DataValueError:
            raise
        except (TypeError, ValueError, KeyError) as err:
            raise SchemaError(f"cannot turn the columns into model inputs: {err}") from err
        feeds = model_feeds(block, self.inputs)
        runner = self._model()
        n = len(next(iter(feeds.values())))
        runs = [
            runner.run({k: v[start : start + self.batch_size] for k, v in feeds.items()})
            for start in range(0, n, self.batch_size)
        ]
        if not runs:  # no entries
            return ak.Array(empty_scores(self.names, self.outputs))
        return ak.Array(
            {
                branch: _column(np.concatenate([r[output] for r in runs]))
                for output, branch in self.names.items()
            }
        )

    def _columns(self, events: Any) -> dict[str, Any]:
        fields = list(events) if isinstance(events, Mapping) else ak.fields(events)
        missing = [c for c in self.columns if c not in fields]
        if missing:
            hints = {m: closest(m, fields) for m in missing}
            raise SchemaError(
                f"the model {self.model!r} needs the columns {missing}, not in the arrays "
                f"(closest: {hints}); a training alias must be computed as a column first"
            )
        return {c: events[c] for c in self.columns}

    def _model(self) -> Any:
        with self._lock:
            if self._runner is None:
                self._runner = open_model(self.model, self.threads, self.token)
            return self._runner
