"""`rootml inspect`: what a file holds — trees/ntuples (or a Parquet file's columns, an HDF5 file's
groups of datasets), entries, branches, types, sizes."""

from __future__ import annotations

from typing import Any

from rootml.datasets._columns import ColumnTable
from rootml.datasets._files import (
    close_file,
    file_format,
    list_trees,
    open_file,
    open_tree,
    with_retries,
)
from rootml.datasets._rntuple import RNTupleTable
from rootml.datasets._schema import BranchInfo, describe


def inspect_file(url: str) -> dict[str, Any]:
    """A JSON-ready report of every TTree and RNTuple in the file at `url` (for a Parquet file
    its one table, for an HDF5 file each group holding datasets).

    {"url", "compression", "trees": [{"name", "class", "entries", "branches": [{"name", "type",
    "kind", "jagged", "counter", "collection", "fields", "compressed_bytes",
    "uncompressed_bytes"}]}]}. kind "unsupported" marks what rootml cannot read as numbers
    (objects, strings, nested records and lists); "counter" is the branch holding a jagged
    branch's item counts (None for a std::vector, which has none); "collection" is the collection
    a jagged branch belongs to. A collection of records ("Jet" of an RNTuple or Parquet file)
    has a row of kind "collection" listing its "fields" before the rows of its fields ("Jet.pt").
    A split object's sizes are those of all its sub-branches. Sizes are None where the format
    does not tell them (RNTuple fields). Raises FileAccessError.
    """
    if file_format(url) != "root":
        return _inspect_tables(url)
    import uproot

    file = open_file(url)
    try:
        code = file.file.fCompress
        report = {
            "url": url,
            "compression": repr(uproot.compression.Compression.from_code(code)) if code else "none",
            "trees": [],
        }
        for name, classname in list_trees(file).items():
            tree = file[name]
            if "RNTuple" in classname:
                table = RNTupleTable(tree, name, url)
                described, sizes = table.describe(), table.sizes()
            else:
                described, sizes = describe(tree), _tbranch_sizes(tree)
            report["trees"].append(
                _tree_report(name, classname, int(tree.num_entries), described, sizes)
            )
        return report
    finally:
        close_file(file)


def _inspect_tables(url: str) -> dict[str, Any]:
    """The report of a Parquet or HDF5 file: one entry per table (group)."""
    if file_format(url) == "hdf5":
        from rootml.datasets._hdf5 import data_groups

        names = with_retries(lambda: data_groups(url), url=url)
    else:
        names = [None]
    report: dict[str, Any] = {"url": url, "compression": None, "trees": []}
    for name in names:
        table: ColumnTable = with_retries(lambda n=name: open_tree(url, n)[2], url=url)
        try:
            report["compression"] = report["compression"] or table.compression
            report["trees"].append(
                _tree_report(
                    table.name, table.kind, table.num_entries, table.describe(), table.sizes()
                )
            )
        finally:
            table.close()
    report["compression"] = report["compression"] or "none"
    return report


_SIZES = ("compressed_bytes", "uncompressed_bytes")


def _tbranch_sizes(tree: Any) -> dict[str, tuple[int, int]]:
    sizes = {}
    for top in tree.branches:
        # A split object's own baskets are empty: its data is in its sub-branches.
        parts = [top, *top.itervalues(recursive=True)]
        sizes[top.name] = tuple(sum(int(getattr(b, what)) for b in parts) for what in _SIZES)
    return sizes


def _tree_report(
    name: str | None,
    classname: str,
    entries: int,
    described: dict[str, BranchInfo],
    sizes: dict[str, tuple],
) -> dict[str, Any]:
    rows = []
    fields: dict[str, list[str]] = {}
    for info in described.values():
        if info.collection and info.collection != info.name and info.collection not in described:
            fields.setdefault(info.collection, []).append(info.name)
    for name_, info in described.items():
        collection = info.collection
        if collection in fields and fields[collection][0] == name_:
            rows.append(_row(collection, "collection", "", None, fields=fields[collection]))
        size = sizes.get(name_, (None, None))
        rows.append(_row(name_, info.kind, info.typename, info.counter, collection, sizes=size))
    return {"name": name, "class": classname, "entries": entries, "branches": rows}


def _row(
    name: str,
    kind: str,
    typename: str,
    counter: str | None,
    collection: str | None = None,
    fields: list[str] | None = None,
    sizes: tuple = (None, None),
) -> dict[str, Any]:
    return {
        "name": name,
        "type": typename,
        "kind": kind,
        "jagged": kind == "jagged",
        "counter": counter,
        "collection": collection,
        "fields": fields,
        "compressed_bytes": sizes[0],
        "uncompressed_bytes": sizes[1],
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a human-readable table."""
    lines = [f"{report['url']}  (compression {report['compression']})"]
    for tree in report["trees"]:
        title = f" {tree['name']!r}" if tree["name"] is not None else ""
        lines.append(f"  {tree['class']}{title}: {tree['entries']} entries")
        width = max((len(b["name"]) for b in tree["branches"]), default=4)
        for b in tree["branches"]:
            size = (
                f"{b['compressed_bytes']:>10} B" if b["compressed_bytes"] is not None else " " * 12
            )
            extra = f" [counter {b['counter']}]" if b["counter"] else ""
            if b.get("fields"):
                extra = f" [{', '.join(b['fields'])}]"
            lines.append(f"    {b['name']:<{width}}  {b['kind']:<11} {size}  {b['type']}{extra}")
    return "\n".join(lines)
