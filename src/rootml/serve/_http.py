"""HTTP details of the server kept out of the app: body reading and error answers."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse

from rootml.errors import ProtocolError


def error_response(
    message: str, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``{"error": message}`` with `status`, `headers` (Starlette's ``Allow`` for 405), and the
    Bearer challenge for 401."""
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed for Content-Encoding gzip/deflate; 413 beyond `limit` bytes
    either on the wire or decompressed, 400 for a bad or unknown encoding."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError(f"body of {declared} bytes is over the limit of {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"body is over the limit of {limit} bytes", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
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
