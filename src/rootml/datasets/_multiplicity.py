"""The first pass: how many items jagged branches hold per entry, to choose pad lengths.

Reads one branch per collection (branches sharing a counter have the same multiplicities) and
the aliases, over the selected entries with the cut applied, files in parallel threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import awkward as ak
import numpy as np

from rootml.datasets._reader import UnitReader
from rootml.transforms import Specs, jagged_parts
from rootml.transforms.specs import check_pad_keys, pad_keys


def multiplicity_specs(ds: Any, max_len: Any) -> Specs:
    """Specs of `ds`'s branches holding multiplicity histograms and pad lengths (no statistics).

    Skips the pass when every jagged branch has a fixed int `max_len` and there are no aliases.
    """
    kinds = {
        name: (info.kind, int(np.prod(info.shape)) if info.shape else 1, info.collection)
        for name, info in ds.branch_info.items()
    }
    leaders = {}
    for name, (kind, _, collection) in kinds.items():
        if kind in ("jagged", "alias"):
            leaders.setdefault(collection or name, name)
    # Before the pass: a key naming nothing is refused now, not after reading every file.
    check_pad_keys(max_len, {n: k[2] for n, k in kinds.items() if k[0] in ("jagged", "alias")})
    fixed = isinstance(max_len, int) or (
        isinstance(max_len, dict) and all(isinstance(v, int) for v in max_len.values())
    )
    aliases = [n for n, k in kinds.items() if k[0] == "alias"]
    histograms: dict[str, np.ndarray] = {}
    if leaders and not (fixed and not aliases and _covers(max_len, ds.branch_info)):
        histograms, alias_kinds = _pass(ds, list(leaders.values()))
        for name in aliases:
            kinds[name] = alias_kinds[name]
    for name, (kind, _, _) in list(kinds.items()):
        if kind == "alias":  # not read: only possible when the pass was skipped
            kinds[name] = ("flat", 1, None)
    specs = Specs.empty(kinds, ds.fingerprint())
    for name, (kind, _, collection) in kinds.items():
        leader = leaders.get(collection or name)
        if kind == "jagged" and leader in histograms:
            specs.branches[name].add_multiplicity(histograms[leader])
    specs.resolve_pad(max_len)
    return specs


def _covers(max_len: Any, branch_info: dict) -> bool:
    if isinstance(max_len, int):
        return True
    return all(
        info.kind != "jagged" or any(k in max_len for k in pad_keys(name, info.collection))
        for name, info in branch_info.items()
    )


def _pass(ds: Any, names: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    by_file: dict[int, list] = {}
    for unit in ds.plan:
        by_file.setdefault(unit.file, []).append(unit)

    def one_file(units: list) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
        reader = UnitReader(
            ds.files, ds.tree, names, ds.aliases, ds.cut, ds.retries, ds.backoff, max_open=1,
            cache=ds.cache,
        )  # fmt: skip
        histograms: dict[str, np.ndarray] = {}
        kinds: dict[str, tuple] = {}
        try:
            for unit in units:
                columns, _ = reader.read(unit)
                for name in names:
                    values = columns[name]
                    if isinstance(values, ak.Array) and values.ndim > 1:
                        counts, _ = jagged_parts(values)
                        histograms[name] = _add(histograms.get(name), np.bincount(counts))
                        kinds[name] = ("jagged", 1, name)
                    else:
                        kinds.setdefault(name, ("flat", 1, None))
        finally:
            reader.close()
        return histograms, kinds

    histograms: dict[str, np.ndarray] = {}
    kinds: dict[str, tuple] = {}
    with ThreadPoolExecutor(min(4, max(len(by_file), 1))) as pool:
        for part, part_kinds in pool.map(one_file, by_file.values()):
            for name, histogram in part.items():
                histograms[name] = _add(histograms.get(name), histogram)
            kinds.update(part_kinds)
    return histograms, kinds


def _add(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    if a is None:
        return b
    out = np.zeros(max(len(a), len(b)), dtype=np.int64)
    out[: len(a)] += a
    out[: len(b)] += b
    return out
