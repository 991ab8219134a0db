"""The format seam: a table of named columns read over an entry range.

A TTree is read by uproot's own `arrays` (expressions included). Every other format (RNTuple,
Parquet, HDF5) is a `ColumnTable`: it describes its branches, gives its cluster edges (row
groups, chunks) and reads named columns of entries [start, stop) as awkward or numpy arrays; the
aliases and the cut are then computed here, by uproot's own expression language, so `cut` and
`aliases` mean the same on every format.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rootml.datasets._schema import BranchInfo
from rootml.errors import SchemaError


class ColumnTable(abc.ABC):
    """One opened table of one file. Subclasses set `name` (the tree, ntuple or group name, None
    for a Parquet file), `url` and `num_entries`, and implement `describe` and `read_fields`."""

    name: str | None = None
    url: str = ""
    num_entries: int = 0
    kind = "table"  # what `rootml inspect` calls it: "RNTuple", "Parquet", "HDF5 group"
    threaded = False  # read_fields may run in several threads at once, on disjoint names

    @abc.abstractmethod
    def describe(self) -> dict[str, BranchInfo]:
        """Branch name -> BranchInfo of every column, in stored order."""

    @abc.abstractmethod
    def read_fields(self, names: Sequence[str], start: int, stop: int) -> dict[str, Any]:
        """The columns `names` (each one of `describe()`) of entries [start, stop)."""

    def boundaries(self) -> tuple[int, ...]:
        """Entry numbers where a cluster (row group, chunk) starts; () when unknown."""
        return ()

    def keys(self) -> dict[str, str]:
        """Every name an expression may use -> the branch holding it."""
        return {name: name for name in self.describe()}

    def sizes(self) -> dict[str, tuple[int | None, int | None]]:
        """Branch -> (compressed, uncompressed) bytes where the format knows them."""
        return {}

    def close(self) -> None:  # noqa: B027  (most tables hold nothing open)
        """Release what the table holds open (an HDF5 file); nothing by default."""

    def read(
        self,
        names: Sequence[str],
        aliases: Mapping[str, str],
        cut: str | None,
        cut_key: str,
        start: int,
        stop: int,
        run: Callable[..., dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Columns `names` (branches or aliases) of entries [start, stop), plus `cut_key` holding
        the cut's values when `cut` is given. run(read, fields), when given, calls
        read(group) for groups of `fields` (in threads, for a `threaded` table) and merges what
        they return. Raises SchemaError naming a name the table lacks or an expression that
        cannot be computed."""
        context = {"url": self.url, "tree": self.name, "entries": (start, stop)}
        keys = self.keys()
        wanted = [n for n in names if n not in aliases]
        language = _language()
        for expression in [*aliases.values(), *([cut] if cut else [])]:
            wanted += language.free_symbols(expression, list(keys), aliases, self.url, self.name)
        missing = sorted(set(wanted) - set(keys) - set(aliases))
        if missing:
            # Never left out silently (uproot's RNTuple reader drops unknown names).
            raise SchemaError(f"no branch {missing}", **context)
        fields = [n for n in dict.fromkeys(wanted) if n not in aliases]  # aliases of aliases too
        read = functools.partial(self.read_fields, start=start, stop=stop)
        columns = read(fields) if run is None else run(read, fields)
        expressions = {**aliases, **({cut_key: cut} if cut is not None else {})}
        computed = evaluate(columns, expressions, keys, self.url, self.name, context, cut_key)
        columns.update(computed)
        return {n: columns[n] for n in [*names, *([cut_key] if cut is not None else [])]}


def _language() -> Any:
    import uproot

    return uproot.language.python.PythonLanguage()


def evaluate(
    columns: Mapping[str, Any],
    expressions: Mapping[str, str],
    keys: Mapping[str, str],
    url: str,
    tree: str | None,
    context: Mapping[str, Any],
    cut_key: str | None = None,
) -> dict[str, Any]:
    """Compute `expressions` (name -> uproot expression, aliases may use each other) on
    `columns` with uproot's Python expression language: the same names (dotted ones such as
    "Jet.pt" included), the same `get("...")` and the same functions as a TTree's `arrays`.
    Raises SchemaError naming the expression (`cut_key` names the cut) that cannot be computed."""
    import uproot.language.python as python

    language = python.PythonLanguage()
    values: dict[str, Any] = dict(columns)
    known = [*keys, *expressions]

    def get(name: str) -> Any:
        if name not in values:
            values[name] = compute(name)
        return values[name]

    scope = {language.getter: get, "function": language.functions}

    def compute(name: str) -> Any:
        expression = expressions[name]
        try:
            # uproot's own translation of an expression into a function of `get` (private in
            # uproot, used by its TTree reader): dotted names, get("x") and functions alike.
            function = python._expression_to_function(
                expression, known, expressions, language.functions, language.getter, scope,
                url, tree,
            )  # fmt: skip
            return function()
        except SchemaError:
            raise  # an alias it uses, already named
        except Exception as err:  # the expression, not the data: on_error="skip" keeps it
            what = "cut" if name == cut_key else f"alias {name!r}"
            raise SchemaError(
                f"{what} {expression!r} cannot be computed: {type(err).__name__}: {err}",
                **context,
            ) from err

    return {name: get(name) for name in expressions}
