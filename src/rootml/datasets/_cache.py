"""A local copy of remote files, so that epoch 2+ over root:// (or https://) reads local disk.

`RootIterableDataset(files, cache="/scratch/rootml-cache", cache_size="200GB")`: the first read
of a remote file in a worker copies the whole file into the cache folder (one worker per file,
under a lock; the others read remotely meanwhile), and every later open of that URL, in any
epoch, worker or new process, opens the copy. A copy is checked once per dataset, in the parent,
against the server's size and modification time (a stat, no data); a copy that differs is
replaced; when the server cannot be reached, the copy is used as it is, with a warning.

Copies are keyed by the URL and written as a temporary file renamed into place (atomic: a
reader never sees half a file). The folder holds at most `cache_size` bytes: after each copy,
the least recently used copies are removed (a copy in use stays readable: Linux keeps an
unlinked open file). A file larger than the whole bound is read remotely, never copied.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from typing import Any

from rootml.errors import ConfigError

log = logging.getLogger(__name__)

_BLOCK = 8 << 20
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 1 << 10,
          "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}  # fmt: skip


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as "200GB", "1.5 TiB". Raises ConfigError."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(value))
    if match and match.group(2).upper() in _UNITS:
        try:
            size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
        except ValueError:
            size = 0
        if size > 0:
            return size
    raise ConfigError(f"cache_size must be a number of bytes or e.g. '200GB', not {value!r}")


class FileCache:
    """Copies of remote files in `folder`, at most `max_bytes` in all. Picklable: DataLoader
    workers get it with the dataset, and open the copies the parent checked."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int):
        self.folder = os.path.abspath(os.fspath(folder))
        self.max_bytes = int(max_bytes)
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cache folder {self.folder!r} cannot be made: {err}") from err

    def __repr__(self) -> str:
        return f"FileCache({self.folder!r}, max_bytes={self.max_bytes})"

    def path(self, url: str) -> str:
        """Where the copy of `url` is (or would be): the key keeps the file's ending, by which
        its format is known."""
        key = hashlib.sha256(url.encode()).hexdigest()[:40]
        ending = os.path.splitext(url.rsplit("::", 1)[-1].split("?", 1)[0])[1][:16]
        return os.path.join(self.folder, key + ending)

    def check(self, url: str) -> str | None:
        """In the parent, once: the copy of `url` when there is one that matches the server's
        size and mtime (or the server cannot be reached), else None (a stale copy is removed)."""
        local = self.path(url)
        if not os.path.exists(local):
            return None
        stored = _read_json(local + ".json")
        try:
            remote = _stat(url)
        except (OSError, TimeoutError) as err:
            log.warning("cannot check the cached copy of %s (%s); using it as it is", url, err)
            return local
        if stored.get("size") == remote.get("size") and stored.get("mtime") == remote.get("mtime"):
            return local
        log.info("the cached copy of %s differs from the server's file; it is replaced", url)
        _remove(local)
        return None

    def local(self, url: str) -> str | None:
        """The copy of `url` to open: an existing one, or one made now when no other process
        is making it (then this process reads remotely: None). None also for a file larger
        than the bound."""
        local = self.path(url)
        if os.path.exists(local):
            _touch(local)
            return local
        with open(local + ".lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # another worker is copying it
            try:
                if os.path.exists(local):  # made while this one waited for the lock
                    return local
                return self._copy(url, local)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _copy(self, url: str, local: str) -> str | None:
        import fsspec

        info = _stat(url)
        if info.get("size") and info["size"] > self.max_bytes:
            log.warning("%s (%d bytes) is larger than cache_size: read remotely", url, info["size"])
            return None
        started = time.monotonic()
        handle, partial = tempfile.mkstemp(dir=self.folder, prefix=".partial-")
        try:
            with os.fdopen(handle, "wb") as out, fsspec.open(url, "rb") as source:
                while block := source.read(_BLOCK):
                    out.write(block)
            with open(partial + ".json", "w") as sidecar:
                json.dump({"url": url, **info}, sidecar)
            os.replace(partial + ".json", local + ".json")
            os.replace(partial, local)  # the data last: a copy is there only when whole
        except BaseException:
            _remove(partial)
            raise
        log.info(
            "cached %s (%d bytes, %.1f s)", url, os.path.getsize(local), time.monotonic() - started
        )
        self._evict(keep=local)
        return local

    def _evict(self, keep: str) -> None:
        """Remove the least recently used copies until the folder holds at most max_bytes."""
        copies = []
        for entry in os.scandir(self.folder):
            if (
                entry.is_file()
                and not entry.name.startswith(".")
                and not entry.name.endswith((".json", ".lock"))
            ):
                stat = entry.stat()
                copies.append((stat.st_mtime, stat.st_size, entry.path))
        total = sum(size for _, size, _ in copies)
        for _, size, path in sorted(copies):
            if total <= self.max_bytes:
                break
            if path != keep:
                _remove(path)
                total -= size


def make_cache(folder: str | os.PathLike | None, size: Any = None) -> FileCache | None:
    """The dataset's cache from its Selection's `cache` and `cache_size` (checked there; None:
    no cache). The default bound is half the space free in the folder now."""
    if folder is None:
        return None
    if size is None:
        os.makedirs(folder, exist_ok=True)
        stat = os.statvfs(folder)
        size = max(stat.f_bavail * stat.f_frsize // 2, 1)
    return FileCache(folder, parse_size(size))


def _stat(url: str) -> dict[str, Any]:
    """Size and modification time of a remote file (a stat request, no data)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    mtime = info.get("mtime", info.get("LastModified"))
    return {
        "size": info.get("size"),
        "mtime": mtime if isinstance(mtime, (int, float)) else str(mtime),
    }


def _touch(path: str) -> None:
    """Mark a copy as used now (the order of eviction)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def _remove(path: str) -> None:
    for name in (path, path + ".json"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as source:
            return json.load(source)
    except (OSError, ValueError):
        return {}
