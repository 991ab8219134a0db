"""Where files are and how they open: file lists, redirectors, retries, tree lookup.

Protocol details stay here, at the edge: everything above sees an opened TTree or RNTuple.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import uproot

from rootml.datasets._xrootd import make_fork_safe, release_handle
from rootml.errors import FileAccessError, SchemaError, closest, where

log = logging.getLogger(__name__)

# The XRootD client reads these once, when it is first loaded (at the first root:// open, never
# at import). Its defaults let a read from a dead server hang for minutes; rootml bounds them
# and retries on its own (see `with_retries`). A value the user set wins. Forks are handled in
# _xrootd (XRD_RUNFORKHANDLER is left to the user). XRD_STREAMERRORWINDOW=0: otherwise, for that
# many seconds after a failed connection, the client answers every request to the server with the
# cached "[FATAL] Connection error" without trying it, and rootml's retries (0.5 s apart) would
# never reach a server that is back.
_XRD_DEFAULTS = {
    "XRD_CONNECTIONWINDOW": "5",
    "XRD_CONNECTIONRETRY": "1",
    "XRD_REQUESTTIMEOUT": "20",
    "XRD_STREAMTIMEOUT": "20",
    "XRD_TIMEOUTRESOLUTION": "1",
    "XRD_STREAMERRORWINDOW": "0",
}

_REMOTE_SCHEMES = ("root://", "http://", "https://", "s3://", "gs://", "simplecache::")
T = TypeVar("T")
_REMOTE_OPTIONS = {"timeout": 30}


def is_remote(url: str) -> bool:
    """A URL read through fsspec: a remote scheme, or a chain such as "filecache::root://..."."""
    return url.startswith(_REMOTE_SCHEMES) or "::" in url


def resolve_files(
    files: str | os.PathLike | Sequence[str] | Mapping[str, Any], redirector: str | None = None
) -> tuple[list[str], list[Any] | None]:
    """Expand `files` into a list of URLs, and labels when `files` is a dict path -> label.

    `files` may be one path or URL, a glob, a folder (its ROOT, Parquet and HDF5 files), a `.txt`
    list (one per line, `#` comments), a list of any of these, or a dict path -> label. With `redirector="root://site"`, paths without a scheme
    that do not exist locally become `root://site//path` (grid paths such as /store/...).
    Raises FileAccessError when a glob or a list file matches nothing.
    """
    if isinstance(files, Mapping):
        urls, labels = [], []
        for path, label in files.items():
            expanded = _expand(str(path), redirector)
            urls += expanded
            labels += [label] * len(expanded)
        return urls, labels
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    urls = [url for item in files for url in _expand(str(item), redirector)]
    if not urls:
        raise FileAccessError("no input files were given")
    return urls, None


def _expand(item: str, redirector: str | None) -> list[str]:
    if is_remote(item):
        return [item]
    if item.endswith(".txt") and os.path.isfile(item):
        with open(item) as listing:
            lines = [line.split("#", 1)[0].strip() for line in listing]
        urls = [url for line in lines if line for url in _expand(line, redirector)]
        if not urls:
            raise FileAccessError(f"the file list {item} names no files")
        return urls
    if os.path.isdir(item):
        return _folder(item)
    if glob.has_magic(item):
        matches = sorted(glob.glob(item))
        if not matches:
            raise FileAccessError(f"no file matches the pattern {item!r}")
        return matches
    if redirector and not os.path.exists(item):
        return [redirector.rstrip("/") + "//" + item.lstrip("/")]
    return [item]


def _folder(folder: str) -> list[str]:
    """The files of a known format (ROOT, Parquet, HDF5) under `folder`, sorted, subfolders
    included (a Parquet dataset's partitions); hidden and "_"-prefixed files (Spark's _SUCCESS,
    _metadata) are not data."""
    found = sorted(
        os.path.join(top, name)
        for top, _, names in os.walk(folder)
        for name in names
        if not name.startswith((".", "_"))
        and os.path.splitext(name)[1].lower() in (".root", *FORMATS)
    )
    if not found:
        raise FileAccessError(f"the folder {folder} holds no ROOT, Parquet or HDF5 file")
    return found


def with_retries(
    action: Callable[[], T], retries: int = 3, backoff: float = 0.5, **context: Any
) -> T:
    """Run `action`, retrying transport errors (OSError, TimeoutError) with exponential backoff.

    A missing local file is not retried. After the budget, raises FileAccessError with the
    `context` keywords (url, tree, entries) as its attributes.
    """
    for attempt in range(retries + 1):
        try:
            return action()
        except FileNotFoundError as err:
            raise FileAccessError(f"file not found: {err}", **context) from err
        except (OSError, TimeoutError) as err:
            if attempt == retries:
                raise FileAccessError(
                    f"cannot read after {retries + 1} attempts: {err}", **context
                ) from err
            delay = backoff * 2**attempt
            log.warning("read failed %s (%s); retrying in %.1f s", where(**context), err, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# File name endings of the formats read besides ROOT; anything else is opened as ROOT.
FORMATS = {
    ".parquet": "parquet", ".parq": "parquet", ".pq": "parquet",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".he5": "hdf5",
}  # fmt: skip


def file_format(url: str) -> str:
    """ "root", "parquet" or "hdf5", by the file name's ending (of the last URL of a chain such
    as "simplecache::root://...", without a "?query")."""
    path = url.rsplit("::", 1)[-1].split("?", 1)[0].lower()
    return FORMATS.get(os.path.splitext(path)[1], "root")


def open_tree(url: str, tree: str | None, copy: str | None = None) -> tuple[Any, str | None, Any]:
    """(handle to close, tree name, tree) of the TTree, RNTuple, Parquet file or HDF5 group
    `tree` of `url` (None: the only one), read from `copy` (a local copy of it) when given. A
    TTree is uproot's; the others are ColumnTables (rootml.datasets._columns). Transport
    failures raise OSError (for the caller to retry); a missing or unreadable file
    FileAccessError; a missing tree SchemaError."""
    path = copy or url
    fmt = file_format(url)
    if fmt != "root":
        if not is_remote(path) and not os.path.exists(path):
            raise FileAccessError("file not found", url=url)
        if fmt == "parquet":
            from rootml.datasets._parquet import ParquetTable as Table
        else:
            from rootml.datasets._hdf5 import HDF5Table as Table
        table = Table(path, tree)
        table.url = url  # errors name the URL, not the copy
        return table, table.name, table
    file = open_once(path)
    try:
        name, obj = find_tree(file, tree, url)
    except BaseException:
        close_file(file)
        raise
    if is_rntuple(obj):
        from rootml.datasets._rntuple import RNTupleTable

        obj = RNTupleTable(obj, name, url)
    return file, name, obj


def is_rntuple(tree: Any) -> bool:
    return "RNTuple" in type(tree).__name__


def open_file(url: str, retries: int = 3, backoff: float = 0.5) -> Any:
    """Open a ROOT file through uproot (fsspec for remote URLs), with bounded retries."""
    return with_retries(lambda: open_once(url), retries, backoff, url=url)


def xrootd_defaults() -> None:
    """Put rootml's XRD_* defaults into the environment where the user has not set them: before
    the first remote open of this process, which may load the XRootD client."""
    for key, value in _XRD_DEFAULTS.items():
        os.environ.setdefault(key, value)


def open_once(url: str) -> Any:
    """Open a ROOT file once. Transport failures raise OSError (for the caller to retry); a
    missing local file or a file that is not ROOT raises FileAccessError."""
    if not is_remote(url) and not os.path.exists(url):
        raise FileAccessError("file not found", url=url)
    if is_remote(url):
        xrootd_defaults()
        if url.startswith("root://"):
            make_fork_safe()  # after the defaults: it loads the XRootD client
    try:
        # No array cache: every unit is read once, and uproot's default (100 MB per open file)
        # would make memory grow with the number of files open in a worker.
        if is_remote(url):
            return uproot.open(url, array_cache=None, **_REMOTE_OPTIONS)
        return uproot.open(url, array_cache=None)
    except (OSError, TimeoutError):
        forget_connections(url)
        raise
    except Exception as err:
        if is_remote(url):  # a half-dead connection surfaces as ValueError & co: retry it
            forget_connections(url)
            raise OSError(f"{type(err).__name__}: {err}") from err
        raise FileAccessError(f"not a readable ROOT file: {err}", url=url) from err


def close_file(file: Any) -> None:
    """Close a file from `open_once`/`open_file`/`open_tree` (a table too), and for root:// the
    handle fsspec-xrootd would otherwise keep open after it."""
    source = getattr(getattr(file, "file", None), "source", None)
    file.close()
    if source is not None:
        release_handle(source)


def forget_connections(url: str) -> None:
    """After a transport failure: drop fsspec's cached filesystems for `url`'s protocol, so the
    retry opens a fresh one. fsspec-xrootd keeps file handles per filesystem instance, and a
    handle that died with its connection would otherwise be reused by every retry."""
    if is_remote(url):
        import fsspec

        fsspec.get_filesystem_class(url.split("://", 1)[0]).clear_instance_cache()


def list_trees(file: Any) -> dict[str, str]:
    """Names (without cycle) of the TTrees and RNTuples at the top of `file`, with class names."""
    found = {}
    for key, classname in file.classnames(recursive=False).items():
        if classname == "TTree" or classname.startswith("ROOT::") and "RNTuple" in classname:
            found.setdefault(key.split(";")[0], classname)
    return found


def find_tree(file: Any, tree: str | None, url: str) -> tuple[str, Any]:
    """The TTree or RNTuple named `tree` (or the only one when `tree` is None)."""
    trees = list_trees(file)
    if tree is None:
        if len(trees) != 1:
            what = "no TTree or RNTuple" if not trees else f"several trees {sorted(trees)}"
            raise SchemaError(f"{what}; pass tree=NAME", url=url)
        tree = next(iter(trees))
    if tree not in trees:
        raise SchemaError(f"no TTree or RNTuple named {tree!r}; found {sorted(trees)}", url=url)
    return tree, file[tree]


def match_names(
    patterns: Sequence[str],
    available: Sequence[str],
    url: str | None = None,
    tree: str | None = None,
) -> list[str]:
    """Names of `available` matching names or glob patterns, in `available` order.

    Raises SchemaError (with `url` and `tree`) naming the closest matches for a name or pattern
    that matches nothing.
    """
    chosen = set()
    for pattern in patterns:
        hits = fnmatch.filter(available, pattern)
        if not hits:
            close = closest(pattern, available)
            hint = f"; closest: {close}" if close else ""
            raise SchemaError(f"no branch matches {pattern!r}{hint}", url=url, tree=tree)
        chosen.update(hits)
    return [name for name in available if name in chosen]
