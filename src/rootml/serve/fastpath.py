"""The infer fast path: POST .../infer answered in raw ASGI, before FastAPI sees it.

FastAPI's middleware, router and dependency solving cost ~250 us of CPU per request here, more
than decoding, running and encoding a single-row infer together; Request, Headers and Response
objects another ~10 us of a ~50 us request. `InferFastPath` wraps the app (the shape of
Starlette's middleware) and hands infer POSTs to a handler that gets the few headers it needs
and answers with two ASGI messages; every other request, and the lifespan, goes to the app,
whose infer routes stay declared for the OpenAPI schema and answer what this does not take
(other methods: 405). Errors are answered by the same table as every route (serve._http).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from rootml.serve._http import exception_response
from rootml.serve.errors import EXPECTED

log = logging.getLogger(__name__)

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
# The request headers an infer reads, by their lower-case ASGI names.
_INFER_HEADERS = frozenset(
    (b"content-length", b"content-encoding", b"inference-header-content-length")
)
# (headers by lower-case name, ASGI receive, model name, version or None) -> (body, JSON
# header length or None): HttpRoutes.infer_body.
InferHandler = Callable[
    [Mapping[str, str], Receive, str, str | None], Awaitable[tuple[bytes, int | None]]
]


def infer_headers(content: bytes, header_length: int | None) -> list[tuple[bytes, bytes]]:
    """ASGI headers of an infer answer: JSON, or a JSON header of `header_length` bytes and
    tensors."""
    if header_length is None:
        return [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    return [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", b"%d" % len(content)),
        (b"inference-header-content-length", b"%d" % header_length),
    ]


class InferFastPath:
    """ASGI app: infer POSTs to `infer`, everything else to `app`.

    It stands in for `app` where one is expected (uvicorn, TestClient, ``app.state``,
    ``app.openapi()``): other attributes are the wrapped app's.
    """

    def __init__(self, app: ASGIApp, infer: InferHandler) -> None:
        self.app, self.infer = app, infer

    def __getattr__(self, name: str) -> Any:
        if name in ("app", "infer"):  # not set yet: no wrapped app to ask
            raise AttributeError(name)
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path, root = scope["path"], scope.get("root_path", "")
            match = INFER_PATH.fullmatch(
                path[len(root) :] if root and path.startswith(root) else path
            )
            if match:
                await self._answer(scope, receive, send, *match.groups())
                return
        await self.app(scope, receive, send)

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, model_name: str, version: str | None
    ) -> None:
        headers = {}
        for key, value in scope["headers"]:
            if key in _INFER_HEADERS:
                headers[key.decode()] = value.decode("latin-1")
        try:
            content, header_length = await self.infer(headers, receive, model_name, version)
        except Exception as err:
            if not isinstance(err, EXPECTED):
                log.exception("infer request for model %s failed", model_name)
            await exception_response(err)(scope, receive, send)
            return
        headers = infer_headers(content, header_length)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})
