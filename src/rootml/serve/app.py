"""The HTTP server: KServe V2 REST over FastAPI, the tensor path kept off pydantic.

This module wires the parts: `Endpoints` (what each operation does, serve.endpoints) with its
model manager and metrics, the routes registered from one table (serve.routes), the exception
table (serve._http over serve.errors), and the infer fast path around the app (serve.fastpath).
Infer bodies are read as bytes (size-capped before and after decompression), decoded by
`serve.codec` with orjson and checked against the model's signature by hand; FastAPI and pydantic
serve the metadata, repository and OpenAPI routes. Every error is ``{"error": message}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

from fastapi import FastAPI

from rootml.errors import ModelError
from rootml.serve._http import EXCEPTION_HANDLERS
from rootml.serve._openapi import openapi_schema
from rootml.serve.endpoints import Endpoints
from rootml.serve.fastpath import InferFastPath
from rootml.serve.routes import register_routes
from rootml.serve.settings import ServeSettings as ServeSettings

_SETTINGS_ENV = "ROOTML_SERVE_SETTINGS"


def create_app(settings: ServeSettings) -> InferFastPath:
    """The server app for `settings`; models load at startup (ready once they have).

    An ASGI app: the FastAPI app inside the infer fast path, which stands in for it
    (``app.state.manager``, ``app.state.metrics``, ``app.openapi()``).
    """
    from rootml import __version__

    endpoints = Endpoints(settings, __version__)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await endpoints.start()
        grpc_server = None
        if settings.grpc_port:
            # Imported only here: a server without gRPC never loads grpcio.
            from rootml.serve.grpc.server import start_grpc

            grpc_server = await start_grpc(endpoints, settings)
        yield
        if grpc_server is not None:
            await grpc_server.stop(grace=1.0)
        await endpoints.stop()

    api = FastAPI(
        title="rootml inference server",
        version=__version__,
        lifespan=lifespan,
        description="KServe V2 / Open Inference Protocol over onnxruntime",
        exception_handlers=EXCEPTION_HANDLERS,
    )
    api.state.endpoints = endpoints
    api.state.manager, api.state.metrics = endpoints.manager, endpoints.metrics
    api.openapi = lambda: openapi_schema(api)
    http = register_routes(api, endpoints)
    return InferFastPath(api, http.infer_body)


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


def app_from_env() -> InferFastPath:
    """App factory for uvicorn workers: settings come as JSON in ROOTML_SERVE_SETTINGS."""
    return create_app(ServeSettings(**json.loads(os.environ[_SETTINGS_ENV])))


def run_server(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted: one process, or `settings.workers` uvicorn worker processes."""
    import uvicorn

    # http/loop "auto": httptools and uvloop (dependencies of rootml) where installed.
    options = {"host": host, "port": port, "log_level": "warning", "access_log": False}
    if settings.tls_cert:
        options |= {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key}
    if settings.workers <= 1:
        uvicorn.run(create_app(settings), **options)
        return
    # Workers refuse model control anyway, so the token is not handed to them.
    worker_settings = dataclasses.replace(settings, token=None)
    os.environ[_SETTINGS_ENV] = json.dumps(dataclasses.asdict(worker_settings))
    uvicorn.run("rootml.serve.app:app_from_env", factory=True, workers=settings.workers, **options)
