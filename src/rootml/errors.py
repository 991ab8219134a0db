"""rootml's exceptions: each message names the file URL, tree, branch or entry range involved."""

from __future__ import annotations


class RootmlError(Exception):
    """Base class of every error rootml raises on purpose."""


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


def where(
    url: str | None = None,
    tree: str | None = None,
    branch: str | None = None,
    entries: tuple[int, int] | None = None,
) -> str:
    """The context of an error in uproot's style: ``in file X, tree Y, branch Z, entries a-b``."""
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
