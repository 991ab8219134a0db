"""Which entries train, validate and test a run: exact rules on entry numbers and expressions,
independent of shuffling, workers and ranks.

Per file, of its selected entries [start, stop) (n of them):

    [start ........ train ........ | ... test ... | ... validation ... ) stop
                                    round(n * test) round(n * val)

so every selected entry is in exactly one part. k-fold cross validation splits by an expression
instead (TMVA CrossValidation's SplitExpr, weaver's --cross-validation "event%k"): the fold of an
entry is `(expression) % n_folds`; fold k's model trains (and validates, on the last val_fraction
of each file) on the entries of the other folds and is tested on fold k's entries, all of them.
The parts are cuts (uproot expressions, as RootIterableDataset's `cut=` takes them), combined with
the user's cut, so the datasets read exactly those entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rootml.errors import ConfigError

Ranges = list[tuple[int, int]]


@dataclass(frozen=True)
class Parts:
    """Entry ranges per file of each part, and the cut of each (None: the user's cut alone)."""

    train: Ranges
    val: Ranges
    test: Ranges
    train_cut: str | None = None
    test_cut: str | None = None


def split_entries(ranges: Ranges, val_fraction: float, test_fraction: float = 0.0) -> Parts:
    """Train / validation / test ranges per file (see the module docstring). Raises ConfigError
    for fractions outside [0, 1) or adding up to 1 or more."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), not {value}")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction {val_fraction} + test_fraction {test_fraction} leave nothing to train"
        )
    train, val, test = [], [], []
    for start, stop in ranges:
        n = stop - start
        val_start = stop - int(round(n * val_fraction))
        test_start = max(val_start - int(round(n * test_fraction)), start)
        train.append((start, test_start))
        test.append((test_start, val_start))
        val.append((val_start, stop))
    return Parts(train, val, test)


def split_ranges(ranges: Ranges, val_fraction: float) -> tuple[Ranges, Ranges]:
    """Train / validation entry ranges: the last `val_fraction` of each file's selected entries
    (ranges: [start, stop) per file) is held out, by entry number."""
    parts = split_entries(ranges, val_fraction)
    return parts.train, parts.val


def n_folds_of(folds: str, n_folds: int | None) -> int:
    """The number of folds: `n_folds`, else N of a trailing "% N" in the expression."""
    if n_folds is not None:
        if n_folds < 2:
            raise ConfigError(f"n_folds must be at least 2, not {n_folds}")
        return int(n_folds)
    found = re.search(r"%\s*(\d+)\s*\)*\s*$", folds)
    if not found or int(found.group(1)) < 2:
        raise ConfigError(
            f"folds {folds!r} does not end in '% N' (N >= 2): give n_folds, the number of folds"
        )
    return int(found.group(1))


def fold_expression(folds: str, n_folds: int) -> str:
    """The uproot expression of an entry's fold number, 0 .. n_folds - 1."""
    return f"(({folds}) % {n_folds})"


def fold_parts(
    ranges: Ranges, val_fraction: float, folds: str, n_folds: int, k: int, cut: str | None
) -> Parts:
    """Fold k of a k-fold split: training and validation ranges as split_entries (no test part)
    restricted to the other folds; the test part is every selected entry of fold k."""
    if not 0 <= k < n_folds:
        raise ConfigError(f"fold must be in 0..{n_folds - 1}, not {k}")
    parts = split_entries(ranges, val_fraction)
    fold = fold_expression(folds, n_folds)
    return Parts(
        parts.train,
        parts.val,
        list(ranges),
        and_cut(cut, f"{fold} != {k}"),
        and_cut(cut, f"{fold} == {k}"),
    )


def and_cut(cut: str | None, extra: str) -> str:
    """Both conditions, as one uproot expression."""
    return extra if not cut else f"({cut}) & ({extra})"
