"""`rootml inspect`: what a ROOT file holds — trees/ntuples, entries, branches, types, sizes."""

from __future__ import annotations

from typing import Any

from rootml.datasets._files import close_file, list_trees, open_file
from rootml.datasets._schema import describe, is_rntuple


def inspect_file(url: str) -> dict[str, Any]:
    """A JSON-ready report of every TTree and RNTuple in the file at `url`.

    {"url", "compression", "trees": [{"name", "class", "entries", "branches": [{"name", "type",
    "kind", "jagged", "counter", "compressed_bytes", "uncompressed_bytes"}]}]}. kind
    "unsupported" marks what rootml cannot read as numbers (objects, strings); "counter" is the
    branch holding a jagged branch's item counts (None for a std::vector, which has none). A
    split object's sizes are those of all its sub-branches. Sizes are None where uproot does not
    know them (RNTuple fields). Raises FileAccessError.
    """
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
            report["trees"].append(
                {
                    "name": name,
                    "class": classname,
                    "entries": int(tree.num_entries),
                    "branches": _branches(tree),
                }
            )
        return report
    finally:
        close_file(file)


_SIZES = ("compressed_bytes", "uncompressed_bytes")


def _branches(tree: Any) -> list[dict[str, Any]]:
    rows = []
    for name, info in describe(tree).items():
        sizes = (None, None)
        if not is_rntuple(tree):
            # A split object's own baskets are empty: its data is in its sub-branches.
            parts = [tree[name], *tree[name].itervalues(recursive=True)]
            sizes = tuple(sum(int(getattr(b, what)) for b in parts) for what in _SIZES)
        rows.append(
            {
                "name": name,
                "type": info.typename,
                "kind": info.kind,
                "jagged": info.kind == "jagged",
                "counter": info.counter,
                "compressed_bytes": sizes[0],
                "uncompressed_bytes": sizes[1],
            }
        )
    return rows


def format_report(report: dict[str, Any]) -> str:
    """The report as a human-readable table."""
    lines = [f"{report['url']}  (compression {report['compression']})"]
    for tree in report["trees"]:
        lines.append(f"  {tree['class']} {tree['name']!r}: {tree['entries']} entries")
        width = max((len(b["name"]) for b in tree["branches"]), default=4)
        for b in tree["branches"]:
            size = (
                f"{b['compressed_bytes']:>10} B" if b["compressed_bytes"] is not None else " " * 12
            )
            extra = f" [counter {b['counter']}]" if b["counter"] else ""
            lines.append(f"    {b['name']:<{width}}  {b['kind']:<11} {size}  {b['type']}{extra}")
    return "\n".join(lines)
