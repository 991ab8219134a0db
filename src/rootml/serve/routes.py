"""The HTTP routes of the server: one flat table, registered by `register_routes`.

Each route is a method, of `Endpoints` where FastAPI can call it as it is (metadata, health), or
of `HttpRoutes`, a thin layer that reads what HTTP carries (bodies within their size and time
limits, the bearer token) and writes what HTTP answers (status 503 while not ready, media types,
raw infer headers), calling `Endpoints` for the rest. Errors are raised, never answered here:
the app's exception handlers answer them (serve._http).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from rootml.serve._http import read_body, receive_body
from rootml.serve._openapi import (
    CONTROL_ERRORS,
    INDEX_OPENAPI,
    INFER_OPENAPI,
    INFER_RESPONSES,
    MODEL_ERRORS,
    TFAAS_OPENAPI,
    TFAAS_RESPONSES,
    UPLOAD_OPENAPI,
    IndexEntry,
    ModelMetadata,
    ModelReady,
    ServerMetadata,
    ServerReady,
    Statistics,
    UploadAnswer,
    errors,
)
from rootml.serve.endpoints import Endpoints
from rootml.serve.fastpath import infer_headers

Receive = Callable[[], Awaitable[dict]]


class HttpRoutes:
    """The routes that need HTTP: request bodies and headers in, Responses out."""

    def __init__(self, endpoints: Endpoints):
        self.endpoints, self.settings = endpoints, endpoints.settings

    async def _body(self, request: Request, limit: int | None = None) -> bytes:
        return await read_body(
            request, limit or self.settings.max_body_bytes, self.settings.body_timeout_s
        )

    async def ready(self):
        if not self.endpoints.ready:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    async def infer_body(
        self,
        headers: Mapping[str, str],
        receive: Receive,
        model_name: str,
        model_version: str | None,
    ) -> tuple[bytes, int | None]:
        """An infer request (its headers by lower-case name, ASGI `receive`) answered: the
        response body and its JSON header length (None: all JSON). The fast path calls this."""
        started = time.perf_counter()
        body = await receive_body(
            receive,
            self.settings.max_body_bytes,
            headers.get("content-length"),
            headers.get("content-encoding"),
            self.settings.body_timeout_s,
        )
        length = headers.get("inference-header-content-length")
        return await self.endpoints.infer(model_name, model_version, body, length, started)

    async def infer(self, request: Request, model_name: str, model_version: str | None = None):
        # Declared for the OpenAPI schema; the fast path takes these POSTs before FastAPI does.
        content, header_length = await self.infer_body(
            request.headers, request.receive, model_name, model_version
        )
        response = Response(content)
        response.raw_headers = infer_headers(content, header_length)
        return response

    async def tfaas_json(self, request: Request):
        """TFaaS: {"keys": [...], "values": [...], "model": name} -> list of probabilities."""
        started = time.perf_counter()
        answer = await self.endpoints.tfaas(await self._body(request), started)
        return Response(orjson.dumps(answer), media_type="application/json")

    async def prometheus_metrics(self):
        metrics = self.endpoints.metrics
        return Response(metrics.render(), media_type=metrics.content_type)

    async def repository_index(self, request: Request):
        return await self.endpoints.index(await self._body(request))

    async def repository_load(self, request: Request, model_name: str) -> dict:
        self.endpoints.authorize(request.headers.get("authorization"))
        return await self.endpoints.load(model_name, await self._body(request))

    async def repository_unload(self, request: Request, model_name: str) -> dict:
        self.endpoints.authorize(request.headers.get("authorization"))
        await self._body(request)
        return await self.endpoints.unload(model_name)

    async def repository_upload(self, request: Request, model_name: str) -> dict[str, str]:
        """Add a new version of `model_name` and serve it once loaded (needs the token)."""
        self.endpoints.authorize(request.headers.get("authorization"))
        body = await self._body(request, self.settings.max_upload_bytes)
        return await self.endpoints.upload(model_name, body)


def _model_paths(suffix: str = "") -> list[str]:
    """A model route with and without a version."""
    return [
        f"/v2/models/{{model_name}}/versions/{{model_version}}{suffix}",
        f"/v2/models/{{model_name}}{suffix}",
    ]


def route_table(endpoints: Endpoints, http: HttpRoutes) -> list[tuple[str, list[str], Any, dict]]:
    """Every route of the server: (method, paths, handler, FastAPI options), in one flat list."""
    e, h = endpoints, http
    live = {"tags": ["health"]}
    ready_503 = {503: {"model": ServerReady, "description": "models still loading"}}
    ready = {**live, "response_model": ServerReady, "responses": ready_503}
    server = {"tags": ["metadata"], "response_model": ServerMetadata}
    model = {"tags": ["metadata"], "responses": MODEL_ERRORS}
    stats = {"tags": ["metadata"], "response_model": Statistics, "responses": MODEL_ERRORS}
    model_ready = {"tags": ["health"], "response_model": ModelReady, "responses": MODEL_ERRORS}
    infer = {"tags": ["inference"], "responses": INFER_RESPONSES, "openapi_extra": INFER_OPENAPI}
    tfaas = {"tags": ["inference"], "responses": TFAAS_RESPONSES, "openapi_extra": TFAAS_OPENAPI}
    metrics = {"tags": ["metadata"], "response_class": PlainTextResponse}
    index = {"tags": ["repository"], "response_model": list[IndexEntry]}
    index |= {"responses": errors(400, 408, 413), "openapi_extra": INDEX_OPENAPI}
    control = {"tags": ["repository"], "responses": CONTROL_ERRORS}
    upload = {**control, "response_model": UploadAnswer, "openapi_extra": UPLOAD_OPENAPI}
    repository_model = "/v2/repository/models/{model_name}"
    return [
        ("GET", ["/v2/health/live"], e.live, live),
        ("GET", ["/v2/health/ready"], h.ready, ready),
        ("GET", ["/v2"], e.server_metadata, server),
        # Before the model routes: /v2/models/stats is not a model named "stats".
        ("GET", ["/v2/models/stats", *_model_paths("/stats")], e.model_stats, stats),
        ("GET", _model_paths(), e.model_metadata, {**model, "response_model": ModelMetadata}),
        ("GET", _model_paths("/ready"), e.model_ready, model_ready),
        ("GET", _model_paths("/config"), e.model_config, model),
        ("GET", _model_paths("/rootml"), e.model_rootml, model),
        ("POST", _model_paths("/infer"), h.infer, infer),
        ("POST", ["/json"], h.tfaas_json, tfaas),
        ("GET", ["/metrics"], h.prometheus_metrics, metrics),
        ("POST", ["/v2/repository/index"], h.repository_index, index),
        ("POST", [f"{repository_model}/load"], h.repository_load, control),
        ("POST", [f"{repository_model}/unload"], h.repository_unload, control),
        ("POST", [f"{repository_model}/upload"], h.repository_upload, upload),
    ]


def register_routes(app: FastAPI, endpoints: Endpoints) -> HttpRoutes:
    """Add every route of `route_table` to `app`; return the HttpRoutes (the fast path uses its
    `infer_body`)."""
    http = HttpRoutes(endpoints)
    for method, paths, handler, options in route_table(endpoints, http):
        for path in paths:
            app.add_api_route(path, handler, methods=[method], **options)
    return http
