"""The one table from exceptions to answers, for every front-end of the server.

Model management, decoding and the endpoints raise meanings (rootml.errors: ModelNotFound,
Overloaded, BodyTooLarge, ...), each carrying its HTTP status; they never pick a status
themselves. This module turns any exception into the (status, message) a client is answered with:
the HTTP routes, the infer fast path and the gRPC front-end answer the same exception the same
way: over gRPC its status becomes the status code of `grpc_answer`.
"""

from __future__ import annotations

from rootml.errors import DeadlineExceeded, ModelError, ProtocolError

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


# gRPC status codes (grpc.StatusCode names) for the statuses `answer` gives; a DeadlineExceeded
# (HTTP 503, retry later) is DEADLINE_EXCEEDED over gRPC, the code its clients retry on.
GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def grpc_answer(err: BaseException) -> tuple[str, str]:
    """(gRPC status code name, message) answering `err`: `answer`'s, its status as a code."""
    status, message = answer(err)
    if isinstance(err, DeadlineExceeded):
        return "DEADLINE_EXCEEDED", message
    return GRPC_CODES.get(status, "UNKNOWN"), message
