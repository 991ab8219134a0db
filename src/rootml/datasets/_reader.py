"""Reading work units: open files lazily in the reading process, read a unit's branches, apply the
cut, and keep the entry number of every row kept."""

from __future__ import annotations

import functools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from rootml._runtime import usable_cores
from rootml.datasets._columns import ColumnTable
from rootml.datasets._files import (
    close_file,
    forget_connections,
    is_remote,
    open_tree,
    with_retries,
)
from rootml.datasets._plan import Unit
from rootml.errors import FileAccessError, RootmlError, SchemaError

log = logging.getLogger(__name__)

_CUT = "_rootml_cut"


def read_threads() -> int:
    """Decompression threads for a reading process: the cores it may use, shared among the
    processes reading at once (DataLoader workers x ranks on this node), at most 8."""
    import torch

    cores = usable_cores()
    info = torch.utils.data.get_worker_info()
    readers = (info.num_workers if info is not None else 1) * int(
        os.environ.get("LOCAL_WORLD_SIZE", "1")
    )
    return max(1, min(cores // max(readers, 1), 8))


class UnitReader:
    """Reads work units of `urls` in this process. Files open on first use and stay open (at most
    `max_open` at a time). Not shared between processes: each DataLoader worker makes its own.
    A unit's branches (RNTuple: fields) are read in `threads` threads (None: `read_threads()`),
    each reading its share of the compressed bytes; zlib and friends release the GIL, so a
    process with spare cores reads a unit several times faster.

    read(unit) -> (columns: name -> awkward/numpy array of the kept rows, entries: int64 (n,)).
    Errors name the file URL, tree and entry range (FileAccessError, SchemaError).
    """

    def __init__(
        self,
        urls: Sequence[str],
        tree: str,
        names: Sequence[str],
        aliases: Mapping[str, str] | None = None,
        cut: str | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_open: int = 4,
        threads: int | None = None,
        cache: Any = None,
    ):
        self.urls, self.tree, self.names = list(urls), tree, list(dict.fromkeys(names))
        self.aliases, self.cut = dict(aliases or {}), cut
        self.retries, self.backoff, self.max_open = retries, backoff, max_open
        self._open: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
        self.threads = read_threads() if threads is None else max(int(threads), 1)
        self._pool: ThreadPoolExecutor | None = None
        self._sizes: dict[int, dict[str, int]] = {}  # file index -> branch -> compressed bytes
        self.cache = cache  # rootml.datasets._cache.FileCache: local copies of remote files

    def read(self, unit: Unit) -> tuple[dict[str, Any], np.ndarray]:
        context = {"url": self.urls[unit.file], "tree": self.tree, "entries": unit[1:]}

        def attempt() -> dict[str, Any]:
            try:
                return self._read_columns(unit)
            except (OSError, TimeoutError):
                self._forget(unit.file)
                forget_connections(self.urls[unit.file])
                raise

        try:
            columns = with_retries(attempt, self.retries, self.backoff, **context)
        except RootmlError:
            raise
        except KeyError as err:  # uproot.KeyInFileError: a branch this file lacks
            raise SchemaError(f"no branch {err.args[0]!r}", **context) from err
        except Exception as err:  # decompression and deserialisation errors of corrupt files
            self._forget(unit.file)
            raise FileAccessError(f"cannot read: {type(err).__name__}: {err}", **context) from err
        entries = np.arange(unit.start, unit.stop, dtype=np.int64)
        if self.cut is not None:
            keep = columns.pop(_CUT)
            if getattr(keep, "ndim", 1) != 1:
                raise SchemaError(
                    f"cut {self.cut!r} gives a list of values per entry, not one True/False "
                    "(reduce it per entry, e.g. count the items that pass)",
                    **context,
                )
            keep = np.asarray(keep, dtype=bool)
            entries = entries[keep]
            columns = {name: values[keep] for name, values in columns.items()}
        return columns, entries

    def tree_of(self, index: int) -> Any:
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index][1]
        url = self.urls[index]
        copy = self.cache.local(url) if self.cache is not None and is_remote(url) else None
        file, _, tree = open_tree(url, self.tree, copy)  # inside read()'s retries
        self._open[index] = (file, tree)
        while len(self._open) > self.max_open:
            self._close(self._open.popitem(last=False)[1][0])
        return tree

    def close(self) -> None:
        while self._open:
            self._close(self._open.popitem()[1][0])
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _read_columns(self, unit: Unit) -> dict[str, Any]:
        tree = self.tree_of(unit.file)
        if isinstance(tree, ColumnTable):  # RNTuple, Parquet, HDF5
            run = self._in_threads if tree.threaded else None
            return tree.read(self.names, self.aliases, self.cut, _CUT, unit.start, unit.stop, run)
        aliases = dict(self.aliases)
        expressions = list(self.names)
        if self.cut is not None:
            aliases[_CUT] = self.cut
            expressions.append(_CUT)
        # Threads split the branches, not the baskets: uproot's decompression executor makes a
        # future per basket and hands every array back through queues, which cost ~15% more CPU
        # than the same reads split by branch, each read as uproot reads alone.
        sizes = self._sizes.get(unit.file)
        if sizes is None:
            sizes = self._sizes[unit.file] = {n: int(b.compressed_bytes) for n, b in tree.items()}

        def read(group: list[str]) -> dict[str, Any]:
            uses = aliases if any(e in aliases for e in group) else None
            return tree.arrays(
                group, aliases=uses, how=dict, entry_start=unit.start, entry_stop=unit.stop
            )

        columns = self._in_threads(read, expressions, sizes)
        return {name: columns[name] for name in expressions}

    def _in_threads(
        self,
        read: Callable[[list[str]], dict[str, Any]],
        names: list[str],
        sizes: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """read(group) of `names` split into this reader's threads by `sizes` (compressed bytes;
        None: alike), merged."""
        groups = self._split(names, dict.fromkeys(names, 1) if sizes is None else sizes)
        columns: dict[str, Any] = {}
        for part in self._map([functools.partial(read, group) for group in groups]):
            columns.update(part)
        return columns

    def _split(self, expressions: list[str], sizes: Mapping[str, int]) -> list[list[str]]:
        """`expressions` in at most `threads` groups of about equal `sizes` (compressed bytes).
        Aliases, the cut and names without a size stay in the first group, the one that gets the
        aliases (and raises uproot's error for a name the file lacks)."""
        if self.threads == 1:
            return [expressions]
        first = [e for e in expressions if e in self.aliases or e == _CUT or e not in sizes]
        groups: list[list[str]] = [first, *([] for _ in range(self.threads - 1))]
        load = [sum(sizes.get(e, 0) for e in first), *(0 for _ in range(self.threads - 1))]
        for name in sorted(
            dict.fromkeys(e for e in expressions if e not in first), key=lambda e: -sizes[e]
        ):
            lightest = load.index(min(load))
            groups[lightest].append(name)
            load[lightest] += sizes[name]
        return [group for i, group in enumerate(groups) if group or i == 0]

    def _map(self, calls: Sequence[Callable[[], Any]]) -> list[Any]:
        """The results of `calls`, run in this reader's threads (all of them run to the end
        before an error is raised, so no read is left in flight on a file)."""
        if len(calls) == 1:
            return [calls[0]()]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rootml-branches")
        futures = [self._pool.submit(call) for call in calls]
        wait(futures)
        return [future.result() for future in futures]

    def _forget(self, index: int) -> None:
        # After a failed read: the connection may be dead, so its XRootD handle is left to
        # forget_connections rather than closed here (which would wait on a dead server).
        if index in self._open:
            self._close(self._open.pop(index)[0], release=False)

    @staticmethod
    def _close(file: Any, release: bool = True) -> None:
        try:
            if release:
                close_file(file)
            else:
                file.close()
        except Exception as err:  # a dead connection may fail to close; nothing is lost
            log.debug("closing failed: %s", err)
