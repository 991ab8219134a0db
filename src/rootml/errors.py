"""rootml's exceptions: each keeps the file URL, tree, branch and entry range it is about as data.

`str(err)` composes them in uproot's style (``in file X, tree 'Y', branch 'Z', entries a-b: what``),
so the CLI can print any RootmlError as one line, and callers (``on_error="skip"``, a retry loop,
a report) can read ``err.url``, ``err.tree``, ``err.branch`` and ``err.entries`` instead of
parsing the text.
"""

from __future__ import annotations

from collections.abc import Iterable


def where(
    url: str | None = None,
    tree: str | None = None,
    branch: str | None = None,
    entries: tuple[int, int] | None = None,
) -> str:
    """The context of an error in uproot's style: ``in file X, tree 'Y', branch 'Z', entries a-b``."""
    parts = []
    if url is not None:
        parts.append(f"in file {url}")
    if tree is not None:
        parts.append(f"tree {tree!r}")
    if branch is not None:
        parts.append(f"branch {branch!r}")
    if entries is not None:
        parts.append(f"entries {entries[0]}-{entries[1]}")
    return ", ".join(parts)


def closest(name: str, names: Iterable[str], n: int = 3) -> list[str]:
    """Up to `n` of `names` closest to `name` (case-insensitive), for "closest: [...]" hints:
    similar spellings first, then names containing it ("Jets" -> "AnalysisJetsAuxDyn")."""
    import difflib

    lower = {candidate.lower(): candidate for candidate in names}
    similar = difflib.get_close_matches(name.lower(), list(lower), n=n)
    containing = sorted((k for k in lower if name.lower() in k and k not in similar), key=len)
    return [lower[m] for m in [*similar, *containing][:n]]


class RootmlError(Exception):
    """Base class of every error rootml raises on purpose.

    message: what is wrong; url / tree / branch / entries (start, stop): where, kept as attributes
    and put in front of the message by `str()`.
    """

    def __init__(
        self,
        message: str = "",
        *,
        url: str | None = None,
        tree: str | None = None,
        branch: str | None = None,
        entries: tuple[int, int] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.url = url
        self.tree = tree
        self.branch = branch
        self.entries = None if entries is None else (int(entries[0]), int(entries[1]))

    @property
    def context(self) -> dict:
        """url, tree, branch and entries as a dict (only those that are set)."""
        items = {"url": self.url, "tree": self.tree, "branch": self.branch, "entries": self.entries}
        return {key: value for key, value in items.items() if value is not None}

    def __str__(self) -> str:
        context = where(self.url, self.tree, self.branch, self.entries)
        if not context:
            return self.message
        return f"{context}: {self.message}" if self.message else context

    def __reduce__(self):
        # Keyword-only context survives pickling (DataLoader workers, spawn, multiprocessing).
        return _rebuild, (type(self), self.message, self.context, self.__dict__)


def _rebuild(cls: type, message: str, context: dict, state: dict) -> RootmlError:
    err = cls.__new__(cls)
    RootmlError.__init__(err, message, **context)
    err.__dict__.update(state)
    return err


class ConfigError(RootmlError, ValueError):
    """An argument or parameter that cannot work (names the argument, or the params.json key)."""


class FileAccessError(RootmlError):
    """A file or URL cannot be opened or read (missing, unreachable, corrupt, truncated)."""


class SchemaError(RootmlError):
    """A tree, ntuple or branch is missing, ambiguous, of an unusable type, or differs between files."""


class SpecsMismatch(RootmlError):
    """A Specs was fitted on other files, tree, branches or cuts than the ones it is used with."""


class DataValueError(RootmlError):
    """Values that a policy refuses (NaN/inf with nan_policy="raise", and similar)."""


class ModelError(RootmlError):
    """A model file, repository entry or export is invalid or unsafe."""


class ProtocolError(RootmlError):
    """A request breaks the inference protocol; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
