"""The one table from exceptions to answers, for every front-end of the server.

Model management, decoding and the endpoints raise meanings (rootml.errors: ModelNotFound,
Overloaded, BodyTooLarge, ...), each carrying its HTTP status; they never pick a status
themselves. This module turns any exception into the (status, message) a client is answered with:
the HTTP routes, the infer fast path and any other front-end answer the same exception the same
way (a gRPC front-end maps the status to its own codes).
"""

from __future__ import annotations

from rootml.errors import ModelError, ProtocolError

# What the server raises on purpose; anything else is a bug, answered 500 and logged.
EXPECTED = (ProtocolError, ModelError)


def answer(err: BaseException) -> tuple[int, str]:
    """(status, message) answering `err`: a ProtocolError's own status and text; 400 and the text
    for a ModelError (a model that cannot take this request: raw columns it cannot use, outputs
    without a batch dim); 500 and only the exception's type for anything else (the traceback is
    logged, never sent)."""
    if isinstance(err, ProtocolError):
        return err.status, str(err)
    if isinstance(err, ModelError):
        return 400, str(err)
    return 500, f"internal error: {type(err).__name__}"
