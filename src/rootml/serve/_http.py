"""HTTP details of the server kept out of the routes: body reading and error answers.

`exception_response` is the HTTP form of serve.errors' table, and `EXCEPTION_HANDLERS` registers it
for FastAPI: the routes and the infer fast path answer every exception through it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rootml.errors import BadRequest, BodyTooLarge, ModelError, ProtocolError, RequestTimeout
from rootml.serve.errors import answer

# A body may take 1 s more per this many bytes beyond the body timeout: slow links are fine,
# stalled senders are not.
BODY_MIN_RATE = 1 << 20
# asyncio.timeout_at (3.11+) costs a timer per request; before it, wait_for per receive.
_timeout_at = getattr(asyncio, "timeout_at", None)


def error_response(
    message: str, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``{"error": message}`` with `status`, `headers` (Starlette's ``Allow`` for 405), the
    Bearer challenge for 401, and ``Connection: close`` for 408 (the rest of the body is not
    read)."""
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 408:
        headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def exception_response(err: BaseException) -> JSONResponse:
    """The answer to any exception: serve.errors' table, and FastAPI's own (a request that fails
    its validation: 400; Starlette's HTTP errors such as 405 with their status and headers)."""
    if isinstance(err, RequestValidationError):
        return error_response(f"invalid request: {err.errors()}", 400)
    if isinstance(err, StarletteHTTPException):
        return error_response(str(err.detail), err.status_code, err.headers)
    status, message = answer(err)
    return error_response(message, status)


async def _handle(request: Request, err: Exception) -> JSONResponse:
    # Unexpected errors are still logged with their traceback by the server.
    return exception_response(err)


EXCEPTION_HANDLERS = dict.fromkeys(
    (ProtocolError, ModelError, RequestValidationError, StarletteHTTPException, Exception), _handle
)


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The body of a Starlette request: `receive_body` with its headers."""
    headers = request.headers
    return await receive_body(
        request.receive,
        limit,
        headers.get("content-length"),
        headers.get("content-encoding"),
        timeout,
    )


async def receive_body(
    receive: Callable[[], Awaitable[dict]],
    limit: int,
    length: str | None = None,
    encoding: str | None = None,
    timeout: float | None = None,
) -> bytes:
    """The request body from ASGI `receive`, decompressed for Content-Encoding (`encoding`)
    gzip/deflate. Raises BodyTooLarge beyond `limit` bytes either as declared (`length`,
    Content-Length), on the wire or decompressed; BadRequest for a bad or unknown encoding or a
    client gone before the end; RequestTimeout when the body has not arrived `timeout` s (plus
    1 s per BODY_MIN_RATE bytes received) after the first read: a stalled sender does not hold its
    connection."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLarge(f"body of {length} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    start = asyncio.get_running_loop().time()
    try:
        if timeout is None:
            await _receive_all(receive, chunks, limit)
        elif _timeout_at is None:  # Python 3.10
            await asyncio.wait_for(_receive_all(receive, chunks, limit), timeout)
        else:
            async with _timeout_at(start + timeout) as deadline:
                await _receive_all(receive, chunks, limit, deadline, start + timeout)
    except asyncio.TimeoutError:
        size = sum(map(len, chunks))
        raise RequestTimeout(
            f"the request body did not arrive in time ({size} bytes in "
            f"{asyncio.get_running_loop().time() - start:.1f} s; the limit is {timeout:g} s "
            f"plus 1 s per {BODY_MIN_RATE >> 20} MiB)"
        ) from None
    body = b"".join(chunks)
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}")
    # gzip, or deflate in its zlib wrapper (what tritonclient sends); 32 makes zlib detect which.
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise BadRequest(f"cannot decompress the {encoding} body: {err}") from None
    if len(out) > limit:
        raise BodyTooLarge(f"body decompresses to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise BadRequest(f"the {encoding} body is truncated")
    return out


async def _receive_all(
    receive: Callable[[], Awaitable[dict]],
    chunks: list[bytes],
    limit: int,
    deadline: Any = None,
    until: float = 0.0,
) -> None:
    """Append the body's chunks to `chunks`; each MiB received moves `deadline` (an
    asyncio.Timeout) 1 s past `until`."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise BadRequest("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return
        if deadline is not None:
            deadline.reschedule(until + size / BODY_MIN_RATE)
