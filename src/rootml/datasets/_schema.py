"""What the branches of a TTree, an RNTuple or a Parquet file are: flat numbers, fixed arrays,
jagged, or unusable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np


@dataclass(frozen=True)
class BranchInfo:
    """One branch (RNTuple field, Parquet column, HDF5 dataset) as rootml sees it.

    kind: "flat" (one number per entry), "fixed" (a fixed-size array: `shape`), "jagged" (a
    variable-length list of numbers), or "unsupported" (objects such as TLorentzVector,
    TVector2/3 or a split class, strings, nested records and lists).
    collection: for jagged branches, a key shared by branches with the same counts (the counter
    branch of a TTree, e.g. "nJet"; the collection of records holding an RNTuple or Parquet
    field, "Jet" of "Jet.pt"; else the branch itself).
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
    """Branch name -> BranchInfo for every top-level branch of a TTree."""
    return {b.name: _describe_tbranch(b) for b in tree.branches}


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


def describe_form(form: ak.forms.RecordForm, typenames: Mapping[str, str]) -> dict[str, BranchInfo]:
    """Branch name -> BranchInfo of the fields of an awkward record form (an RNTuple, a Parquet
    schema), in stored order; `typenames` gives the stored type names (C++ for an RNTuple).

    Numbers are flat (fixed when of a fixed size); a list of numbers is jagged, its own
    collection. A collection of records (uproot's `{"Jet": ak.zip({...})}`, ROOT's
    `std::vector<Jet>`) gives one jagged branch per field, named as uproot names it ("Jet.pt"),
    of the collection "Jet"; a record gives one branch per field ("LV.pt"). Deeper structure
    (records in records, lists in a collection's records, lists of lists) is "unsupported",
    refused by name as a vector<vector> of a TTree is.
    """
    described: dict[str, BranchInfo] = {}
    for name, field in zip(form.fields, form.contents):
        _describe_field(name, field, typenames, described, inside=None)
    return described


def _describe_field(
    name: str, form: Any, typenames: Mapping[str, str], out: dict, inside: str | None
) -> None:
    """Add the branches of field `name`; `inside` is None at the top, "record" for a field of a
    record, else the name of the collection whose records hold it."""
    typename = typenames.get(name) or str(form.type)
    form = _no_option(form)
    numbers = _numbers(form)
    if numbers is not None and (inside in (None, "record") or not numbers[1]):
        dtype, shape = numbers
        if inside not in (None, "record"):
            out[name] = BranchInfo(name, "jagged", dtype.str, typename, collection=inside)
        else:
            out[name] = BranchInfo(name, "fixed" if shape else "flat", dtype.str, typename, shape)
        return
    content = _list_content(form)
    if content is not None and inside in (None, "record"):
        numbers = _numbers(content)
        if numbers is not None and not numbers[1]:
            out[name] = BranchInfo(name, "jagged", numbers[0].str, typename, collection=name)
            return
        if isinstance(content, ak.forms.RecordForm) and inside is None and content.fields:
            for field, sub in zip(content.fields, content.contents):
                _describe_field(f"{name}.{field}", sub, typenames, out, inside=name)
            return
    if isinstance(form, ak.forms.RecordForm) and inside is None and form.fields:
        for field, sub in zip(form.fields, form.contents):
            _describe_field(f"{name}.{field}", sub, typenames, out, inside="record")
        return
    collection = inside if inside not in (None, "record") else None
    out[name] = BranchInfo(name, "unsupported", "", typename, collection=collection)


def _no_option(form: Any) -> Any:
    """The form without its option types (nullable Parquet columns; nulls are read as NaN)."""
    while form.is_option:
        form = form.content
    return form


def _numbers(form: Any) -> tuple[np.dtype, tuple[int, ...]] | None:
    """(dtype, fixed shape per entry) of numbers (a fixed-size array of them included)."""
    form = _no_option(form)
    shape: tuple[int, ...] = ()
    while isinstance(form, ak.forms.RegularForm) and not _is_text(form):
        shape += (form.size,)
        form = _no_option(form.content)
    if not isinstance(form, ak.forms.NumpyForm) or form.parameters.get("__array__"):
        return None
    dtype = np.dtype(ak.types.numpytype.primitive_to_dtype(form.primitive))
    if dtype.kind not in "biuf":
        return None
    return dtype, shape + tuple(form.inner_shape)


def _list_content(form: Any) -> Any:
    """The content of a variable-length list (not text), without option types; else None."""
    if isinstance(form, (ak.forms.ListOffsetForm, ak.forms.ListForm)) and not _is_text(form):
        return _no_option(form.content)
    return None


def _is_text(form: Any) -> bool:
    return form.parameters.get("__array__") in (
        "string",
        "bytestring",
    ) or form.content.parameters.get("__array__") in ("char", "byte")
