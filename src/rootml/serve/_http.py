"""HTTP details of the server kept out of the app: body reading and error answers."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse

from rootml.errors import ProtocolError

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
    gzip/deflate; 413 beyond `limit` bytes either as declared (`length`, Content-Length), on the
    wire or decompressed, 400 for a bad or unknown encoding or a client gone before the end,
    408 when the body has not arrived `timeout` s (plus 1 s per BODY_MIN_RATE bytes received)
    after the first read: a stalled sender does not hold its connection."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise ProtocolError(f"body of {length} bytes is over the limit of {limit} bytes", 413)
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
        raise ProtocolError(
            f"the request body did not arrive in time ({size} bytes in "
            f"{asyncio.get_running_loop().time() - start:.1f} s; the limit is {timeout:g} s "
            f"plus 1 s per {BODY_MIN_RATE >> 20} MiB)",
            408,
        ) from None
    body = b"".join(chunks)
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise ProtocolError(f"unsupported Content-Encoding {encoding!r}")
    # gzip, or deflate in its zlib wrapper (what tritonclient sends); 32 makes zlib detect which.
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as err:
        raise ProtocolError(f"cannot decompress the {encoding} body: {err}") from None
    if len(out) > limit:
        raise ProtocolError(f"body decompresses to more than the limit of {limit} bytes", 413)
    if not inflater.eof:
        raise ProtocolError(f"the {encoding} body is truncated")
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
            raise ProtocolError("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"body is over the limit of {limit} bytes", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return
        if deadline is not None:
            deadline.reschedule(until + size / BODY_MIN_RATE)


def json_body(body: bytes) -> Any:
    """A small JSON body (repository routes, /json); empty means {}. ProtocolError(400) if invalid."""
    if not body.strip():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ProtocolError(f"body is not valid JSON: {err}") from None


def run_error(err: Exception) -> ProtocolError:
    """The error answered for an exception of an onnxruntime run: 400 for bad input, else 500."""
    # onnxruntime's own exception types; InvalidArgument is the caller's fault.
    bad_input = type(err).__name__ in ("InvalidArgument", "InvalidProtobuf")
    return ProtocolError(f"inference failed: {err}", 400 if bad_input else 500)
