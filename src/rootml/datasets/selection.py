"""`Selection`: what to read and how to reach it, the arguments RootIterableDataset, fit_specs
and fit_histograms share, held in one frozen object so that a training, its validation and its
statistics pass read exactly the same entries.

No I/O here: a Selection is checked when made (ConfigError naming the argument), and resolved
(files listed, trees opened) by the dataset that uses it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from rootml import defaults
from rootml.datasets import _arguments as args
from rootml.datasets._cache import parse_size
from rootml.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Selection:
    """The entries to read: files, tree, branches, cut, ranges, and how to reach them.

    files: path/URL, glob, `.txt` list, list of these, or dict path -> label; root:// and
        https:// go through fsspec. `redirector="root://site"` prefixes grid paths that do not
        exist locally.
    tree: TTree or RNTuple name; None takes the only one in the file.
    branches / exclude: names or glob patterns of feature branches (default: every numeric one).
    cut / aliases: uproot expressions (e.g. cut="nJet >= 4", aliases={"HT2": "HT**2"}).
    entries: (start, stop) for every file, or per file (list/dict).
    nevts: entries to read: a total split over files by their entries, or per file (list/dict);
        fit_specs and fit_histograms take a total and read a random sample of that size.
    chunk_size: entries read at once per file (a work unit at most this long).
    preprocess: callable (or "module.py:function") taking and returning a chunk (dict of
        awkward arrays) before padding.
    retries / backoff: attempts after a transport failure, and the first wait between them in
        seconds (doubling each time).
    cache / cache_size: a folder for local copies of remote files (root://, https://), at most
        `cache_size` bytes (int or "200GB"; default half the free space): each file is copied
        whole at its first read and read from the copy in every later epoch and process
        (rootml.datasets._cache). Without it, remote files are read over the network each epoch.

    Selection(files, cut="nJet >= 4").replace(entries=(0, 1000)) gives a copy with other fields.
    """

    FIELDS: ClassVar[tuple[str, ...]]

    files: Any = None
    tree: str | None = None
    branches: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    cut: str | None = None
    aliases: Mapping[str, str] | None = None
    entries: Any = None
    nevts: Any = None
    chunk_size: int = defaults.CHUNK_SIZE
    preprocess: Callable | str | None = None
    redirector: str | None = None
    retries: int = defaults.RETRIES
    backoff: float = defaults.BACKOFF_S
    cache: str | os.PathLike | None = None
    cache_size: int | str | None = None

    def __post_init__(self) -> None:
        checked = {
            "chunk_size": args.positive_int("chunk_size", self.chunk_size),
            "retries": args.non_negative_int("retries", self.retries),
            "backoff": args.real("backoff", self.backoff, minimum=0.0),
            "nevts": args.nevts(self.nevts),
            "cache_size": None if self.cache_size is None else parse_size(self.cache_size),
        }
        if self.cache_size is not None and self.cache is None:
            raise ConfigError("cache_size needs cache=FOLDER")
        if self.cache is not None and not isinstance(self.cache, (str, os.PathLike)):
            raise ConfigError(f"cache must be a folder path, not {self.cache!r}")
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # frozen: the checked value in its type

    def replace(self, **changes: Any) -> Selection:
        """A copy with `changes` (field name -> value), checked again."""
        _check_names(changes, "Selection.replace")
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, selection: Selection | None, caller: str, **given: Any) -> Selection:
        """The selection of a call taking both `selection=` and the fields as arguments:
        `selection` (or the defaults), its fields replaced by the arguments in `given` that are
        not at their default. Raises TypeError naming `caller` for an unknown argument."""
        _check_names(given, caller)
        base = selection if selection is not None else cls()
        if not isinstance(base, Selection):
            raise ConfigError(f"selection must be a rootml.datasets.Selection, not {base!r}")
        changes = {k: v for k, v in given.items() if not _is_default(k, v)}
        return dataclasses.replace(base, **changes) if changes else base


FIELDS = tuple(f.name for f in dataclasses.fields(Selection))
Selection.FIELDS = FIELDS  # the field names, e.g. to tell reading arguments from others
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Selection)}


def _is_default(name: str, value: Any) -> bool:
    default = _DEFAULTS[name]
    return value is default or (
        default is not None and type(value) is type(default) and value == default
    )


def _check_names(given: Mapping[str, Any], caller: str) -> None:
    unknown = [name for name in given if name not in _DEFAULTS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}{hint}")
