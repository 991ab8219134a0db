"""A Parquet file as a ColumnTable, read with awkward (`ak.metadata_from_parquet`,
`ak.from_parquet`) over pyarrow.

Rows are entries and a row group is a cluster: work units end on row-group edges, so a unit of
`chunk_size` entries or more reads whole row groups. Columns map as an RNTuple's fields do
(rootml.datasets._schema.describe_form): numbers are flat, fixed-size lists fixed, lists of
numbers jagged, a list of records ("Jet", as `ak.to_parquet` writes coffea/NanoEvents-style
arrays) one jagged branch per field ("Jet.pt"). Nullable columns are read as numbers: a missing
list is an empty list, a missing number NaN (counted in the dataset's report as nonfinite and
handled by `nan_policy`). Local paths and fsspec URLs (root://, https://) alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import awkward as ak
import numpy as np

from rootml._extras import require
from rootml.datasets._columns import ColumnTable
from rootml.datasets._schema import BranchInfo, describe_form
from rootml.errors import FileAccessError

_PANDAS_INDEX = re.compile(r"__index_level_\d+__")


class ParquetTable(ColumnTable):
    kind = "Parquet"

    def __init__(self, url: str, tree: str | None = None):
        require("parquet", "reading Parquet files", url=url)
        # A Parquet file holds one table: any tree name (the one of ROOT files read with it) is
        # accepted, so Parquet and ROOT inputs mix in one dataset.
        self.url, self.name = url, tree
        try:
            meta = ak.metadata_from_parquet(url)
        except (OSError, TimeoutError):
            raise  # transport: retried by the caller
        except Exception as err:
            raise FileAccessError(
                f"not a readable Parquet file: {type(err).__name__}: {err}", url=url
            ) from err
        self.form = meta["form"]
        self.starts = np.cumsum([0, *meta["col_counts"]]).astype(np.int64)
        self.num_entries = int(meta["num_rows"])
        self._fs, self._path = meta["fs"], meta["paths"][0]
        self._described: dict[str, BranchInfo] | None = None

    def describe(self) -> dict[str, BranchInfo]:
        if self._described is None:
            # pandas keeps a DataFrame's unnamed index as "__index_level_0__": row numbers of
            # the DataFrame, not physics; never a feature.
            kept = [
                (f, c)
                for f, c in zip(self.form.fields, self.form.contents)
                if not _PANDAS_INDEX.fullmatch(f)
            ]
            form = ak.forms.RecordForm([c for _, c in kept], [f for f, _ in kept])
            self._described = describe_form(form, {})
        return self._described

    def boundaries(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.starts[:-1])

    @property
    def compression(self) -> str | None:
        footer = self._footer()
        return str(footer.row_group(0).column(0).compression) if footer.num_row_groups else None

    def sizes(self) -> dict[str, tuple[int | None, int | None]]:
        footer, sizes = self._footer(), {}
        for g in range(footer.num_row_groups):
            group = footer.row_group(g)
            for c in range(group.num_columns):
                column = group.column(c)
                # "Jet.list.item.pt" (or ".list.element.") is the branch "Jet.pt"
                parts = column.path_in_schema.split(".")
                name = ".".join(p for i, p in enumerate(parts) if not _list_level(parts, i))
                packed, full = sizes.get(name, (0, 0))
                sizes[name] = (
                    packed + column.total_compressed_size,
                    full + column.total_uncompressed_size,
                )
        return sizes

    def _footer(self) -> Any:
        import pyarrow.parquet as pq

        with self._fs.open(self._path, "rb") as file:
            return pq.ParquetFile(file).metadata

    def keys(self) -> dict[str, str]:
        keys = {name: name for name in self.describe()}
        for field in self.form.fields:  # a whole list of records ("Jet") for expressions
            keys.setdefault(field, field)
        return keys

    def read_fields(self, names: Sequence[str], start: int, stop: int) -> dict[str, Any]:
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        last = max(int(np.searchsorted(self.starts, stop, side="left")), first + 1)
        array = ak.from_parquet(
            self.url, columns=list(dict.fromkeys(names)), row_groups=range(first, last)
        )
        offset = int(self.starts[first])
        array = array[start - offset : stop - offset]
        return {name: _plain(_field(array, name)) for name in names}


def _field(array: ak.Array, name: str) -> ak.Array:
    """The column `name`: a top-level field, or "Jet.pt", field "pt" of the records of "Jet"."""
    if name in array.fields:
        return array[name]
    head, _, rest = name.partition(".")
    return _field(array[head], rest)


def _plain(array: ak.Array) -> ak.Array:
    """`array` without option types: a missing list becomes an empty list, a missing number NaN
    (so that the dataset counts it as nonfinite). Without nulls only the type changes."""
    if not _has_option(array.layout.form):
        return array
    if array.ndim > 1 and array.layout.is_option:
        array = ak.fill_none(array, [], axis=0)
    if ak.any(ak.is_none(array, axis=-1)):
        return ak.fill_none(array, np.nan, axis=-1)
    return ak.drop_none(array, axis=-1)


def _has_option(form: Any) -> bool:
    while True:
        if form.is_option:
            return True
        if not hasattr(form, "content"):
            return False
        form = form.content


def _list_level(parts: list[str], i: int) -> bool:
    """Whether parts[i] is a list's own level in a Parquet column path ("list", "item")."""
    return parts[i] == "list" or (
        i > 0 and parts[i - 1] == "list" and parts[i] in ("item", "element")
    )
