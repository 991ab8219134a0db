"""Reading work units: open files lazily in the reading process, read a unit's branches, apply the
cut, and keep the entry number of every row kept."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rootml.datasets._columns import ColumnTable
from rootml.datasets._files import forget_connections, is_remote, open_tree, with_retries
from rootml.datasets._plan import Unit
from rootml.errors import FileAccessError, RootmlError, SchemaError

log = logging.getLogger(__name__)

_CUT = "_rootml_cut"


def read_threads() -> int:
    """Decompression threads for a reading process: the cores it may use, shared among the
    processes reading at once (DataLoader workers x ranks on this node), at most 8."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = torch.utils.data.get_worker_info()
    readers = (info.num_workers if info is not None else 1) * int(
        os.environ.get("LOCAL_WORLD_SIZE", "1")
    )
    return max(1, min((cores or 1) // max(readers, 1), 8))


class UnitReader:
    """Reads work units of `urls` in this process. Files open on first use and stay open (at most
    `max_open` at a time). Not shared between processes: each DataLoader worker makes its own.
    TTree baskets are decompressed in `threads` threads (None: `read_threads()`); zlib and
    friends release the GIL, so a process with spare cores reads a unit several times faster.

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
        self._executor: Any = None
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
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def _read_columns(self, unit: Unit) -> dict[str, Any]:
        tree = self.tree_of(unit.file)
        span = {"entry_start": unit.start, "entry_stop": unit.stop}
        if isinstance(tree, ColumnTable):  # RNTuple, Parquet, HDF5
            return tree.read(self.names, self.aliases, self.cut, _CUT, unit.start, unit.stop)
        aliases = dict(self.aliases)
        expressions = list(self.names)
        if self.cut is not None:
            aliases[_CUT] = self.cut
            expressions.append(_CUT)
        if self.threads > 1 and self._executor is None:
            import uproot

            self._executor = uproot.source.futures.ThreadPoolExecutor(self.threads)
        return tree.arrays(
            expressions,
            aliases=aliases or None,
            how=dict,
            decompression_executor=self._executor,
            **span,
        )

    def _forget(self, index: int) -> None:
        if index in self._open:
            self._close(self._open.pop(index)[0])

    @staticmethod
    def _close(file: Any) -> None:
        try:
            file.close()
        except Exception as err:  # a dead connection may fail to close; nothing is lost
            log.debug("closing failed: %s", err)
