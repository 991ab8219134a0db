"""The HTTP server: KServe V2 REST over FastAPI, the tensor path kept off pydantic.

Infer bodies are read as bytes (size-capped before and after decompression), decoded by
`serve.codec` with orjson and checked against the model's signature by hand; FastAPI and pydantic
serve the metadata, repository and OpenAPI routes. Every error is ``{"error": message}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rootml.errors import ModelError, ProtocolError
from rootml.serve._http import error_response, json_body, read_body, receive_body, run_error
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
    UploadAnswer,
    errors,
    openapi_schema,
)
from rootml.serve.codec import encode_infer_response
from rootml.serve.metrics import ServeMetrics
from rootml.serve.models import ModelManager
from rootml.serve.physics import decode_infer
from rootml.serve.tfaas import tfaas_output, tfaas_request

log = logging.getLogger(__name__)

MiB = 1 << 20
# Decoding a large infer body can take seconds of CPU (millions of JSON numbers or BYTES
# elements); beyond this size it runs in a thread, so the event loop goes on serving others.
_PARSE_INLINE_BYTES = 1 * MiB
_SETTINGS_ENV = "ROOTML_SERVE_SETTINGS"
_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_INFER_HEADERS = frozenset(
    (b"content-length", b"content-encoding", b"inference-header-content-length")
)


def _infer_headers(content: bytes, header_length: int | None) -> list[tuple[bytes, bytes]]:
    """ASGI headers of an infer answer: JSON, or a JSON header of `header_length` bytes and
    tensors."""
    if header_length is None:
        return [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    return [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", b"%d" % len(content)),
        (b"inference-header-content-length", b"%d" % header_length),
    ]


@dataclasses.dataclass
class ServeSettings:
    """Everything `rootml serve` configures. `token` None turns load/unload/upload off."""

    repo: str
    token: str | None = None
    max_body_bytes: int = 64 * MiB
    max_upload_bytes: int = 256 * MiB
    request_timeout_s: float = 30.0
    # A request body must arrive within this many seconds, plus one per MiB received (so a
    # steady sender of 1 MiB/s is never cut off); slower or stalled senders get 408.
    body_timeout_s: float = 30.0
    # Check the repository every this many seconds and load what changed (Triton's poll mode);
    # 0: only at start and on load requests.
    repository_poll_secs: float = 0.0
    max_queue: int = 1024
    workers: int = 1
    threads_per_run: int = 1
    run_slots: int | None = None  # default: the cores of this worker
    inline_run_us: float = 100.0  # runs measured at most this long run on the event loop

    def slots(self) -> int:
        """onnxruntime runs in flight per worker: its share of the cores / threads per run."""
        if self.run_slots:
            return self.run_slots
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // (max(1, self.workers) * max(1, self.threads_per_run)))


def create_app(settings: ServeSettings) -> FastAPI:
    """The server app for `settings`; models load at startup (ready once they have)."""
    from rootml import __version__

    metrics = ServeMetrics()
    manager = ModelManager(
        settings.repo,
        run_slots=settings.slots(),
        threads_per_run=settings.threads_per_run,
        max_queue=settings.max_queue,
        metrics=metrics,
        inline_run_s=settings.inline_run_us * 1e-6,
    )
    state = {"ready": False}

    async def poll_repository() -> None:
        while True:
            await asyncio.sleep(settings.repository_poll_secs)
            try:
                await manager.poll()
            except Exception:  # a poll that fails must not end polling
                log.exception("polling the repository %s failed", settings.repo)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await manager.load_all()
        # The server holds ~250k long-lived objects (FastAPI, torch, awkward, sessions): a full
        # collection walks them all for ~120 ms, a stall that every request in flight waits
        # out. Frozen objects are never walked again; garbage of requests still is.
        gc.collect()
        gc.freeze()
        poller = None
        if settings.repository_poll_secs > 0:
            poller = asyncio.create_task(poll_repository())
        state["ready"] = True
        yield
        state["ready"] = False
        if poller is not None:
            poller.cancel()
        await manager.close()

    app = _Server(
        title="rootml inference server",
        version=__version__,
        lifespan=lifespan,
        description="KServe V2 / Open Inference Protocol over onnxruntime",
    )
    app.state.manager = manager
    app.state.metrics = metrics
    app.openapi = lambda: openapi_schema(app)

    @app.exception_handler(ProtocolError)
    async def _protocol_error(request: Request, err: ProtocolError):
        return error_response(str(err), err.status)

    @app.exception_handler(ModelError)
    async def _model_error(request: Request, err: ModelError):
        return error_response(str(err), 400)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        return error_response(f"invalid request: {err.errors()}", 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return error_response(str(err.detail), err.status_code, err.headers)

    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, err: Exception):
        # Still logged with its traceback by the server; the client gets the protocol's body.
        return error_response(f"internal error: {type(err).__name__}", 500)

    def authorize(request: Request) -> None:
        if settings.workers > 1:
            raise ProtocolError(
                "model control is off with --workers > 1 (each worker would "
                "differ); run one worker",
                403,
            )
        if settings.token is None:
            raise ProtocolError("model control is off: start the server with --token-file", 403)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), settings.token.encode()
        ):
            raise ProtocolError("missing or wrong bearer token", 401)

    # Health and metadata ---------------------------------------------------------------------
    @app.get("/v2/health/live", tags=["health"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get(
        "/v2/health/ready",
        tags=["health"],
        response_model=ServerReady,
        responses={503: {"model": ServerReady, "description": "models still loading"}},
    )
    async def ready():
        if not state["ready"]:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    @app.get("/v2", tags=["metadata"], response_model=ServerMetadata)
    async def server_metadata():
        return {
            "name": "rootml",
            "version": __version__,
            "extensions": ["binary_tensor_data", "model_repository", "model_configuration"],
        }

    @app.get(
        "/v2/models/{model_name}",
        tags=["metadata"],
        response_model=ModelMetadata,
        responses=MODEL_ERRORS,
    )
    @app.get(
        "/v2/models/{model_name}/versions/{model_version}",
        tags=["metadata"],
        response_model=ModelMetadata,
        responses=MODEL_ERRORS,
    )
    async def model_metadata(model_name: str, model_version: str | None = None):
        served = manager.get(model_name, model_version)
        versions = (
            [str(served.version)]
            if model_version
            else [str(v) for v in manager.loaded()[model_name]]
        )
        return {
            "name": served.name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": [t.to_dict() for t in served.inputs],
            "outputs": [t.to_dict() for t in served.outputs],
        }

    @app.get(
        "/v2/models/{model_name}/ready",
        tags=["health"],
        response_model=ModelReady,
        responses=MODEL_ERRORS,
    )
    @app.get(
        "/v2/models/{model_name}/versions/{model_version}/ready",
        tags=["health"],
        response_model=ModelReady,
        responses=MODEL_ERRORS,
    )
    async def model_ready(model_name: str, model_version: str | None = None):
        manager.get(model_name, model_version)
        return {"name": model_name, "ready": True}

    @app.get("/v2/models/{model_name}/config", tags=["metadata"], responses=MODEL_ERRORS)
    @app.get(
        "/v2/models/{model_name}/versions/{model_version}/config",
        tags=["metadata"],
        responses=MODEL_ERRORS,
    )
    async def model_config(model_name: str, model_version: str | None = None) -> dict[str, Any]:
        return manager.get(model_name, model_version).model.config

    @app.get("/v2/models/{model_name}/rootml", tags=["metadata"], responses=MODEL_ERRORS)
    @app.get(
        "/v2/models/{model_name}/versions/{model_version}/rootml",
        tags=["metadata"],
        responses=MODEL_ERRORS,
    )
    async def model_rootml(model_name: str, model_version: str | None = None) -> dict[str, Any]:
        """The version's rootml.json (feature names, Specs, labels, normalisation): each version
        has its own. 404 for a plain ONNX model."""
        served = manager.get(model_name, model_version)
        if served.metadata is None:
            raise ProtocolError(
                f"version {served.version} of model {model_name!r} has no rootml.json", 404
            )
        return served.metadata

    # Inference -------------------------------------------------------------------------------
    async def run(served, feeds):
        try:
            return await manager.infer(served, feeds, settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise ProtocolError(
                f"deadline of {settings.request_timeout_s} s exceeded", 503
            ) from None
        except (ProtocolError, ModelError):
            raise
        except Exception as err:
            raise run_error(err) from err

    async def infer_body(
        headers: Mapping[str, str], receive, model_name: str, model_version: str | None
    ) -> tuple[bytes, int | None]:
        """An infer request (its headers by lower-case name, ASGI `receive`) answered: the
        response body and its JSON header length (None: all JSON)."""
        started = time.perf_counter()
        body = await receive_body(
            receive,
            settings.max_body_bytes,
            headers.get("content-length"),
            headers.get("content-encoding"),
            settings.body_timeout_s,
        )
        served = manager.get(model_name, model_version)
        ok = False
        try:
            given_length = headers.get("inference-header-content-length")
            # Model inputs as sent, or raw branch columns through the model's Specs.
            if len(body) > _PARSE_INLINE_BYTES:
                parsed, feeds = await asyncio.to_thread(decode_infer, served, body, given_length)
            else:
                parsed, feeds = decode_infer(served, body, given_length)
            results = await run(served, feeds)
            wanted = parsed.outputs
            if wanted is None:
                wanted = [(name, parsed.binary_output) for name in served.output_names]
            answer = encode_infer_response(
                served.name, str(served.version), [(n, results[n], b) for n, b in wanted], parsed.id
            )
            ok = True
            return answer
        finally:
            metrics.observe_request(served.name, served.version, time.perf_counter() - started, ok)

    @app.post(
        "/v2/models/{model_name}/infer",
        tags=["inference"],
        responses=INFER_RESPONSES,
        openapi_extra=INFER_OPENAPI,
    )
    @app.post(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        tags=["inference"],
        responses=INFER_RESPONSES,
        openapi_extra=INFER_OPENAPI,
    )
    async def infer(request: Request, model_name: str, model_version: str | None = None):
        # Declared for the OpenAPI schema; _Server hands these POSTs to infer_fast first.
        content, header_length = await infer_body(
            request.headers, request.receive, model_name, model_version
        )
        response = Response(content)
        response.raw_headers = _infer_headers(content, header_length)
        return response

    async def infer_fast(scope, receive, send, model_name: str, model_version: str | None):
        # Raw ASGI past every middleware (no Request, Headers or Response objects: ~10 us of a
        # ~50 us single-row request); errors are answered as the exception handlers above do.
        headers = {}
        for key, value in scope["headers"]:
            if key in _INFER_HEADERS:
                headers[key.decode()] = value.decode("latin-1")
        try:
            content, header_length = await infer_body(headers, receive, model_name, model_version)
        except ProtocolError as err:
            response = error_response(str(err), err.status)
        except ModelError as err:
            response = error_response(str(err), 400)
        except Exception as err:
            log.exception("infer request for model %s failed", model_name)
            response = error_response(f"internal error: {type(err).__name__}", 500)
        else:
            headers = _infer_headers(content, header_length)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return
        await response(scope, receive, send)

    app.infer_handler = infer_fast

    @app.post("/json", tags=["inference"], responses=TFAAS_RESPONSES, openapi_extra=TFAAS_OPENAPI)
    async def tfaas_json(request: Request):
        """TFaaS: {"keys": [...], "values": [...], "model": name} -> list of probabilities."""
        started = time.perf_counter()
        doc = json_body(await read_body(request, settings.max_body_bytes, settings.body_timeout_s))
        if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
            raise ProtocolError("TFaaS request needs a 'model' name")
        served = manager.get(doc["model"])
        ok = False
        try:
            feeds, single = tfaas_request(doc, served.inputs, served.metadata)
            if served.max_batch_size and len(next(iter(feeds.values()))) > served.max_batch_size:
                raise ProtocolError(f"more rows than max_batch_size {served.max_batch_size}")
            answer = tfaas_output(await run(served, feeds), single)
            ok = True
        finally:
            metrics.observe_request(served.name, served.version, time.perf_counter() - started, ok)
        return Response(orjson.dumps(answer), media_type="application/json")

    @app.get("/metrics", tags=["metadata"], response_class=PlainTextResponse)
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=metrics.content_type)

    # Repository ------------------------------------------------------------------------------
    @app.post(
        "/v2/repository/index",
        tags=["repository"],
        response_model=list[IndexEntry],
        responses=errors(400, 408, 413),
        openapi_extra=INDEX_OPENAPI,
    )
    async def repository_index(request: Request):
        doc = json_body(await read_body(request, settings.max_body_bytes, settings.body_timeout_s))
        if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
            raise ProtocolError('repository index request must be {} or {"ready": true|false}')
        return manager.index(doc.get("ready", False))

    @app.post(
        "/v2/repository/models/{model_name}/load", tags=["repository"], responses=CONTROL_ERRORS
    )
    async def repository_load(request: Request, model_name: str) -> dict:
        authorize(request)
        doc = json_body(await read_body(request, settings.max_body_bytes, settings.body_timeout_s))
        parameters = doc.get("parameters") if isinstance(doc, dict) else None
        if isinstance(parameters, dict) and any(
            key == "config" or key.startswith("file:") for key in parameters
        ):
            # Triton's load with a config or files override: ignoring them would load the
            # repository's model instead of the one sent.
            raise ProtocolError(
                "load with a config or file: override is not supported; add the model with "
                f"POST /v2/repository/models/{model_name}/upload"
            )
        await manager.load(model_name)
        return {}

    @app.post(
        "/v2/repository/models/{model_name}/unload", tags=["repository"], responses=CONTROL_ERRORS
    )
    async def repository_unload(request: Request, model_name: str) -> dict:
        authorize(request)
        await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        await manager.unload(model_name)
        return {}

    @app.post(
        "/v2/repository/models/{model_name}/upload",
        tags=["repository"],
        response_model=UploadAnswer,
        responses=CONTROL_ERRORS,
        openapi_extra=UPLOAD_OPENAPI,
    )
    async def repository_upload(request: Request, model_name: str) -> dict[str, str]:
        """Add a new version of `model_name` and serve it once loaded (needs the token)."""
        authorize(request)
        body = await read_body(request, settings.max_upload_bytes, settings.body_timeout_s)
        version = await manager.upload(model_name, body, settings.max_upload_bytes)
        return {"name": model_name, "version": str(version)}

    return app


class _Server(FastAPI):
    """The FastAPI app, whose POST .../infer requests go straight to `infer_handler`.

    FastAPI's middleware, router and dependency solving cost ~250 us of CPU per request here,
    more than decoding, running and encoding a single-row infer together. The infer routes stay
    declared for the OpenAPI schema and answer what this does not take (other methods: 405).
    """

    infer_handler = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self.infer_handler:
            path, root = scope["path"], scope.get("root_path", "")
            match = _INFER_PATH.fullmatch(
                path[len(root) :] if root and path.startswith(root) else path
            )
            if match:
                await self.infer_handler(scope, receive, send, *match.groups())
                return
        await super().__call__(scope, receive, send)


def repository_notice(repo: str | os.PathLike, poll_secs: float = 0.0) -> str | None:
    """What to tell a user starting a server on `repo` before it starts: None when it holds a
    model with a version, else how to add one and when this server would see it. Raises
    ModelError, with the way out, when `repo` is not a folder."""
    from rootml.export.repository import list_models, list_versions

    if not os.path.isdir(repo):
        raise ModelError(
            f"model repository {repo} does not exist: export a model into it first "
            f"(rootml export RUN --name NAME --repo {repo}), or give --repo an existing one"
        )
    if any(list_versions(repo, name) for name in list_models(repo)):
        return None
    later = (
        f"this server looks for it every {poll_secs:g} s"
        if poll_secs > 0
        else "this server sees it after a restart, a load request (with --token-file), or "
        "within N s with --repository-poll-secs N"
    )
    return (
        f"model repository {repo} holds no model yet: export one with "
        f"rootml export RUN --name NAME --repo {repo}; {later}"
    )


def app_from_env() -> FastAPI:
    """App factory for uvicorn workers: settings come as JSON in ROOTML_SERVE_SETTINGS."""
    return create_app(ServeSettings(**json.loads(os.environ[_SETTINGS_ENV])))


def run_server(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted: one process, or `settings.workers` uvicorn worker processes."""
    import uvicorn

    # http/loop "auto": httptools and uvloop (dependencies of rootml) where installed.
    options = {"host": host, "port": port, "log_level": "warning", "access_log": False}
    if settings.workers <= 1:
        uvicorn.run(create_app(settings), **options)
        return
    # Workers refuse model control anyway, so the token is not handed to them.
    worker_settings = dataclasses.replace(settings, token=None)
    os.environ[_SETTINGS_ENV] = json.dumps(dataclasses.asdict(worker_settings))
    uvicorn.run("rootml.serve.app:app_from_env", factory=True, workers=settings.workers, **options)
