"""Label, weight and identifier branches: their values as the batch holds them, exactly, or refused.

A label is a class and an identifier an event number: both must come out as the very integer
that was stored. A value int64 cannot hold (a uint64 at or above 2**63, NaN, 0.5) is refused
with a DataValueError naming the branch, the entry and the value, never cast into another
number. uint64 identifiers (NanoAOD's `event` is ULong64_t) are kept exact below 2**63, which
real event numbers are; beyond, the batch's int64 "ids" could only show them negative.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np

from rootml.errors import DataValueError, SchemaError

_INT64_LIMIT = 2.0**63  # floats at or beyond it do not fit int64


def numbers_per_entry(values: Any, argument: str, branch: str, **context: Any) -> np.ndarray:
    """`values` (numpy or awkward, one per entry) as a 1-D numpy array of numbers.

    Raises SchemaError naming `argument` and `branch` for lists, records or strings (an alias
    computing a list per entry, say)."""
    if isinstance(values, ak.Array):
        if values.ndim != 1:
            raise SchemaError(
                f"{argument} must hold one number per entry, not a list ({values.type})",
                branch=branch,
                **context,
            )
        try:
            values = ak.to_numpy(values)
        except (TypeError, ValueError) as err:
            raise SchemaError(
                f"{argument} holds no numbers: {err}", branch=branch, **context
            ) from None
    values = np.asarray(values)
    if values.ndim != 1 or values.dtype.kind not in "biuf":
        raise SchemaError(
            f"{argument} must hold one number per entry, not {values.dtype} of shape "
            f"{values.shape[1:]}",
            branch=branch,
            **context,
        )
    return values


def exact_int64(
    values: Any, argument: str, branch: str, entry_numbers: np.ndarray, **context: Any
) -> np.ndarray:
    """`values` as int64, every value exactly: integers and bools as they are, floats when they
    are whole numbers. Raises DataValueError naming the first value that is not (NaN, 0.5,
    a uint64 >= 2**63), with its entry number (from `entry_numbers`)."""
    values = numbers_per_entry(values, argument, branch, **context)
    kind = values.dtype.kind
    if kind in "bi":
        return values.astype(np.int64, copy=False)
    if kind == "u":
        bad = values > np.iinfo(np.int64).max
        why = "is at or above 2**63, which int64 cannot hold"
    else:
        bad = ~np.isfinite(values) | (values != np.trunc(values)) | (np.abs(values) >= _INT64_LIMIT)
        why = "is not a whole number int64 can hold"
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataValueError(
            f"{argument} value {values[first].item()!r} at entry {int(entry_numbers[first])} {why} "
            f"({int(bad.sum())} such values in these entries); labels and identifiers are "
            "stored exactly or refused",
            branch=branch,
            **context,
        )
    return values.astype(np.int64)


def policy_weights(
    values: Any,
    branch: str,
    policy: str,
    report: Any,
    entry_numbers: np.ndarray,
    **context: Any,
) -> np.ndarray:
    """The weight branch's values as float32. NaN/inf and negative ones are counted in `report`
    (nonfinite:<branch>, negative:<branch>) and handled by the nan_policy: "keep" keeps them,
    "mask" makes them 0 (the entry then counts for nothing), "raise" raises DataValueError
    naming the branch and the first such entry."""
    weight = numbers_per_entry(values, "weight_branch", branch, **context).astype(np.float32)
    nonfinite, negative = ~np.isfinite(weight), weight < 0
    bad = nonfinite | negative
    if not bad.any():
        return weight
    report.add(f"nonfinite:{branch}", int(nonfinite.sum()))
    report.add(f"negative:{branch}", int(negative.sum()))
    if policy == "raise":
        first = int(np.flatnonzero(bad)[0])
        raise DataValueError(
            f"weight_branch has {int(nonfinite.sum())} NaN/inf and {int(negative.sum())} "
            f"negative values (entry {int(entry_numbers[first])}: {weight[first].item()}); pass "
            "nan_policy='keep' to keep them or 'mask' to give those entries weight 0",
            branch=branch,
            **context,
        )
    if policy == "mask":
        weight = np.where(bad, np.float32(0), weight)
    return weight


def float_targets(
    columns: Any, names: list[str], policy: str, report: Any, entry_numbers: np.ndarray, **context
) -> tuple[np.ndarray, np.ndarray]:
    """(targets float32 (n, T), valid bool (n,)): the regression target branches of a chunk.
    NaN/inf targets are counted in `report` (nonfinite:<branch>); policy "raise" raises
    DataValueError naming the branch and the first such entry, otherwise those entries are
    invalid (their target set to 0: the caller gives them weight 0)."""
    values = np.stack(
        [numbers_per_entry(columns[n], "targets", n, **context).astype(np.float32) for n in names],
        axis=1,
    ).reshape(len(entry_numbers), len(names))
    finite = np.isfinite(values)
    if finite.all():
        return values, np.ones(len(values), dtype=bool)
    for name, column in zip(names, finite.T):
        if not column.all():
            report.add(f"nonfinite:{name}", int((~column).sum()))
            if policy == "raise":
                first = int(np.flatnonzero(~column)[0])
                raise DataValueError(
                    f"target {name!r} is NaN/inf at entry {int(entry_numbers[first])} "
                    f"({int((~column).sum())} such values in these entries); pass "
                    "nan_policy='mask' (or 'keep') to give those entries weight 0",
                    branch=name,
                    **context,
                )
    return np.where(finite, values, np.float32(0)), finite.all(axis=1)


def check_variables(names: list[str], meta: Any, aliases: Any) -> None:
    """Refuse reweighting variables that are neither a one-number branch of the first file nor
    an alias (SchemaError naming the variable and the closest branches)."""
    from rootml.errors import closest

    for name in names:
        info = meta.branches.get(name)
        if name in aliases or (info is not None and info.kind == "flat"):
            continue
        what = "no branch or alias" if info is None else f"not one number per entry ({info.kind})"
        raise SchemaError(
            f"reweight variable {name!r} is {what}; closest: {closest(name, meta.branches)}",
            url=meta.url,
            tree=meta.tree,
            branch=name,
        )
