"""What the branches of a TTree or RNTuple are: flat numbers, fixed arrays, jagged, or unusable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np


@dataclass(frozen=True)
class BranchInfo:
    """One branch (or RNTuple field) as rootml sees it.

    kind: "flat" (one number per entry), "fixed" (a fixed-size array: `shape`), "jagged" (a
    variable-length list of numbers), or "unsupported" (objects such as TLorentzVector,
    TVector2/3 or a split class, strings, nested records and lists).
    collection: for jagged branches, a key shared by branches with the same counts (the counter
    branch of a TTree, e.g. "nJet", else the branch itself; the offsets column of an RNTuple).
    counter: the TTree branch holding the item counts of a jagged branch (a C array `x[nJet]`);
    None for a std::vector or an RNTuple field, which carry their own counts.
    """

    name: str
    kind: str
    dtype: str
    typename: str
    shape: tuple[int, ...] = ()
    collection: str | None = None
    counter: str | None = None


def describe(tree: Any) -> dict[str, BranchInfo]:
    """Branch name -> BranchInfo for every top-level branch or field of a TTree or RNTuple."""
    if is_rntuple(tree):
        return _describe_rntuple(tree)
    return {b.name: _describe_tbranch(b) for b in tree.branches}


def is_rntuple(tree: Any) -> bool:
    return "RNTuple" in type(tree).__name__


def _describe_tbranch(branch: Any) -> BranchInfo:
    import uproot

    interp = branch.interpretation
    typename = branch.typename
    if _is_numbers(interp) and not branch.branches:
        dtype = interp.to_dtype
        kind = "fixed" if dtype.shape else "flat"
        return BranchInfo(branch.name, kind, dtype.base.str, typename, dtype.shape)
    if isinstance(interp, uproot.interpretation.jagged.AsJagged) and _is_numbers(interp.content):
        counter = branch.count_branch.name if branch.count_branch is not None else None
        return BranchInfo(
            branch.name,
            "jagged",
            interp.content.to_dtype.str,
            typename,
            collection=counter or branch.name,
            counter=counter,
        )
    return BranchInfo(branch.name, "unsupported", "", typename)


def _is_numbers(interp: Any) -> bool:
    """Whether an interpretation reads plain numbers. AsStridedObjects (TLorentzVector, TVector2,
    TVector3 stored member-wise) is an AsDtype too, of a record dtype: not numbers."""
    import uproot

    numerical = uproot.interpretation.numerical
    return (
        isinstance(interp, numerical.AsDtype)
        and not isinstance(interp, uproot.interpretation.objects.AsStridedObjects)
        and interp.to_dtype.base.kind in "biuf"
    )


def _describe_rntuple(ntuple: Any) -> dict[str, BranchInfo]:
    form = ntuple.to_akform()[0]
    typenames = ntuple.typenames()
    described = {}
    for name, field in zip(form.fields, form.contents):
        typename = typenames.get(name, "")
        if isinstance(field, ak.forms.NumpyForm):
            dtype = np.dtype(ak.types.numpytype.primitive_to_dtype(field.primitive))
            kind = "fixed" if field.inner_shape else "flat"
            info = BranchInfo(name, kind, dtype.str, typename, tuple(field.inner_shape))
        elif (
            isinstance(field, ak.forms.ListOffsetForm)
            and isinstance(field.content, ak.forms.NumpyForm)
            and not field.content.inner_shape
            # std::string is a list of characters: text, not numbers.
            and field.parameters.get("__array__") not in ("string", "bytestring")
            and field.content.parameters.get("__array__") not in ("char", "byte")
        ):
            dtype = np.dtype(ak.types.numpytype.primitive_to_dtype(field.content.primitive))
            info = BranchInfo(name, "jagged", dtype.str, typename, collection=field.form_key)
        else:
            info = BranchInfo(name, "unsupported", "", typename)
        described[name] = info
    return described
