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


class UserCodeError(FileAccessError, ModelError):
    """A user's Python file (model.py, a preprocess hook) is missing, fails to import or lacks
    the function named. A mistake in the request: a dataset never skips it (on_error="skip")."""


class IncompleteOutput(RootmlError):
    """A job that wrote part of its outputs: `failed` lists what was not done (for batch scoring,
    dicts with "file", "entries" [start, stop) or None when unknown, "error"), `outputs` what
    was written complete, `report` the JSON file that lists both."""

    def __init__(self, message: str = "", *, failed=(), outputs=(), report=None, **context):
        super().__init__(message, **context)
        self.failed, self.outputs, self.report = list(failed), list(outputs), report


class ProtocolError(RootmlError):
    """A request the inference protocol refuses, or an error answer a server gave a client.

    Each subclass below is one meaning and carries, as the class attribute `status`, the HTTP
    status that answers it: model management and decoding raise meanings, and only the server's
    edge (rootml.serve.errors) turns them into answers. `ProtocolError(message, status)` with an
    explicit status is for an answer whose meaning is not known here (a client reading a server's
    error, see `error_for_status`).
    """

    status = 400

    def __init__(self, message: str = "", status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class BadRequest(ProtocolError):
    """400: a malformed request (JSON, datatypes, shapes, sizes, names) or one that does not fit
    the model (inputs, outputs, batch size, branches)."""

    status = 400


class Unauthorized(ProtocolError):
    """401: model control without the right bearer token."""

    status = 401


class Forbidden(ProtocolError):
    """403: model control is off (no token configured, or several worker processes)."""

    status = 403


class NotFound(ProtocolError):
    """404: no such thing on the server (a version without rootml.json, ...)."""

    status = 404


class ModelNotFound(NotFound):
    """404: no such model, or no such loaded version of it."""


class RequestTimeout(ProtocolError):
    """408: the request body did not arrive in time."""

    status = 408


class BodyTooLarge(ProtocolError):
    """413: a request over a size limit: its body (as declared, received or decompressed), an
    uploaded archive unpacked, or the model inputs it would be padded to."""

    status = 413


class InferenceFailed(ProtocolError):
    """500: the model's run failed for a reason that is not the request's."""

    status = 500


class Unavailable(ProtocolError):
    """503: the server cannot answer this now; the same request may work later."""

    status = 503


class ModelNotReady(Unavailable):
    """503: the model or version is not (yet) loaded, failed to load, or is being unloaded."""


class Overloaded(Unavailable):
    """503: too many requests are waiting (a full queue)."""


class DeadlineExceeded(Unavailable):
    """503: the request was not answered within the server's request timeout."""


# The general meaning of each status a server answers with (for a client reading an answer).
_BY_STATUS: dict[int, type[ProtocolError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        RequestTimeout,
        BodyTooLarge,
        Unavailable,
    )  # fmt: skip
}


def error_for_status(status: int, message: str) -> ProtocolError:
    """The exception for an error answer of HTTP `status`: its meaning's class where there is one
    (404 -> NotFound, 503 -> Unavailable, ...), else ProtocolError carrying `status`."""
    cls = _BY_STATUS.get(status)
    return cls(message) if cls is not None else ProtocolError(message, status)
