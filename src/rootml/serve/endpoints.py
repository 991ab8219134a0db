"""What each operation of the V2 protocol does, free of HTTP: names and bytes in, data out.

`Endpoints` holds the model manager, the metrics and the settings; its methods raise the meanings
of rootml.errors (ModelNotFound, BadRequest, Unauthorized, ...) and never pick a status. The HTTP
routes (serve.routes) and the infer fast path (serve.fastpath) only read requests and write
answers around them, so a gRPC front-end can call the same methods (for infer: `run` on the feeds
it decodes) and answer the same errors through serve.errors. The methods that FastAPI calls
directly (metadata, readiness) are async and take their path parameters by name, as the routes
declare them; their docstrings are the OpenAPI descriptions.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import orjson

from rootml.errors import (
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    InferenceFailed,
    ModelError,
    NotFound,
    ProtocolError,
    Unauthorized,
)
from rootml.serve.codec import encode_infer_response
from rootml.serve.metrics import ServeMetrics
from rootml.serve.models import ModelManager, ServedVersion
from rootml.serve.physics import decode_infer
from rootml.serve.settings import MiB, ServeSettings
from rootml.serve.tfaas import tfaas_output, tfaas_request

log = logging.getLogger(__name__)

# Decoding a large infer body can take seconds of CPU (millions of JSON numbers or BYTES
# elements); beyond this size it runs in a thread, so the event loop goes on serving others.
PARSE_INLINE_BYTES = 1 * MiB
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "statistics"]
Answer = TypeVar("Answer")


def json_body(body: bytes) -> Any:
    """A small JSON body (repository routes, /json); empty means {}. BadRequest if invalid."""
    if not body.strip():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"body is not valid JSON: {err}") from None


def run_error(err: Exception) -> ProtocolError:
    """The error answered for an exception of an onnxruntime run: BadRequest for bad input (the
    caller's fault), else InferenceFailed."""
    # onnxruntime's own exception types, by name: this module does not import onnxruntime.
    bad_input = type(err).__name__ in ("InvalidArgument", "InvalidProtobuf")
    return (BadRequest if bad_input else InferenceFailed)(f"inference failed: {err}")


class Endpoints:
    """The server's operations on one model repository (see the module docstring).

    `ready` is False until `start` has loaded the models, and again from `stop` on.
    """

    def __init__(self, settings: ServeSettings, version: str):
        self.settings, self.version = settings, version
        self.metrics = ServeMetrics()
        self.manager = ModelManager(
            settings.repo,
            run_slots=settings.slots(),
            threads_per_run=settings.threads_per_run,
            max_queue=settings.max_queue,
            metrics=self.metrics,
            inline_run_s=settings.inline_run_us * 1e-6,
            device=settings.device,
        )
        self.ready = False
        self._poller: asyncio.Task | None = None

    # Life ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every model, then poll the repository if the settings ask for it; ready after."""
        await self.manager.load_all()
        # The server holds ~250k long-lived objects (FastAPI, awkward, sessions): a full
        # collection walks them all for ~120 ms, a stall that every request in flight waits
        # out. Frozen objects are never walked again; garbage of requests still is.
        gc.collect()
        gc.freeze()
        if self.settings.repository_poll_secs > 0:
            self._poller = asyncio.create_task(self._poll_repository())
        self.ready = True

    async def stop(self) -> None:
        """Not ready any more; stop polling, unload every model."""
        self.ready = False
        if self._poller is not None:
            self._poller.cancel()
        await self.manager.close()

    async def _poll_repository(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.manager.poll()
            except Exception:  # a poll that fails must not end polling
                log.exception("polling the repository %s failed", self.settings.repo)

    # Health and metadata ---------------------------------------------------------------------
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "rootml", "version": self.version, "extensions": EXTENSIONS}

    async def model_metadata(self, model_name: str, model_version: str | None = None):
        """The model's signature (V2), and in `parameters` where the version runs: its
        execution_provider, device and instances (rootml's addition; clients ignore it)."""
        served = self.manager.get(model_name, model_version)
        versions = (
            [str(served.version)]
            if model_version
            else [str(v) for v in self.manager.loaded()[model_name]]
        )
        return {
            "name": served.name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": [t.to_dict() for t in served.inputs],
            "outputs": [t.to_dict() for t in served.outputs],
            "parameters": served.placement(),
        }

    async def model_ready(self, model_name: str, model_version: str | None = None):
        self.manager.get(model_name, model_version)
        return {"name": model_name, "ready": True}

    async def model_config(
        self, model_name: str, model_version: str | None = None
    ) -> dict[str, Any]:
        """The model's config.pbtxt as served (see served_config)."""
        return served_config(self.manager.get(model_name, model_version))

    async def model_stats(
        self, model_name: str | None = None, model_version: str | None = None
    ) -> dict[str, Any]:
        """Triton's statistics extension: counts and cumulative ns of the requests and runs of
        every loaded version of the model (or of one version; of every model without a name)."""
        if not model_name:
            loaded = sorted(self.manager.loaded().items())
            versions = [(name, v) for name, numbers in loaded for v in numbers]
        elif model_version:
            versions = [(model_name, self.manager.get(model_name, model_version).version)]
        else:
            self.manager.get(model_name)
            versions = [(model_name, v) for v in self.manager.loaded()[model_name]]
        return self.metrics.stats(versions)

    async def model_rootml(
        self, model_name: str, model_version: str | None = None
    ) -> dict[str, Any]:
        """The version's rootml.json (feature names, Specs, labels, normalisation): each version
        has its own. 404 for a plain ONNX model."""
        served = self.manager.get(model_name, model_version)
        if served.metadata is None:
            raise NotFound(f"version {served.version} of model {model_name!r} has no rootml.json")
        return served.metadata

    # Inference -------------------------------------------------------------------------------
    async def run(self, served: ServedVersion, feeds: dict[str, np.ndarray]) -> dict:
        """The outputs of one run of `served` on `feeds`, within the request timeout. Raises
        DeadlineExceeded past it, Overloaded, and run_error's meanings for a failed run."""
        try:
            return await self.manager.infer(served, feeds, self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"deadline of {self.settings.request_timeout_s} s exceeded"
            ) from None
        except (ProtocolError, ModelError):
            raise
        except Exception as err:
            raise run_error(err) from err

    async def score(
        self,
        served: ServedVersion,
        decode: Callable[[], tuple[Any, dict[str, np.ndarray]]],
        encode: Callable[[Any, dict[str, np.ndarray]], Answer],
        started: float,
        offload: bool = False,
    ) -> Answer:
        """One infer request of `served`, counted in the metrics and statistics: `decode()` ->
        (request, feeds), in a thread when `offload`; the run (`run`); `encode(request,
        outputs)` -> the answer returned. `started` (time.perf_counter) when the request began.
        Every front-end's infer goes through here, so all count alike."""
        ok, rows, decode_s, encode_s = False, 0, 0.0, 0.0
        try:
            began = time.perf_counter()
            request, feeds = await asyncio.to_thread(decode) if offload else decode()
            decode_s = time.perf_counter() - began
            results = await self.run(served, feeds)
            began = time.perf_counter()
            answer = encode(request, results)
            encode_s = time.perf_counter() - began
            rows, ok = served.rows(feeds), True
            return answer
        finally:
            seconds = time.perf_counter() - started
            self.metrics.observe_request(
                served.name, served.version, seconds, ok, rows, decode_s, encode_s
            )

    async def infer(
        self,
        model_name: str,
        model_version: str | None,
        body: bytes,
        header_length: str | None = None,
        started: float | None = None,
    ) -> tuple[bytes, int | None]:
        """An infer request body answered: the response body and its JSON header length (None:
        all JSON). `header_length` is the request's Inference-Header-Content-Length; `started`
        (time.perf_counter) when the request began, for the latency metric (default: now)."""
        started = time.perf_counter() if started is None else started
        served = self.manager.get(model_name, model_version)

        def decode():
            # Model inputs as sent, or raw branch columns through the model's Specs.
            return decode_infer(served, body, header_length)

        def encode(parsed, results: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
            wanted = parsed.outputs
            if wanted is None:
                wanted = [(name, parsed.binary_output) for name in served.output_names]
            outputs = [(n, results[n], b) for n, b in wanted]
            return encode_infer_response(served.name, str(served.version), outputs, parsed.id)

        offload = len(body) > PARSE_INLINE_BYTES
        return await self.score(served, decode, encode, started, offload)

    async def tfaas(self, body: bytes, started: float | None = None) -> list:
        """TFaaS: {"keys": [...], "values": [...], "model": name} -> list of probabilities."""
        started = time.perf_counter() if started is None else started
        doc = json_body(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
            raise BadRequest("TFaaS request needs a 'model' name")
        served = self.manager.get(doc["model"])

        def decode():
            feeds, single = tfaas_request(doc, served.inputs, served.metadata)
            if served.max_batch_size and len(next(iter(feeds.values()))) > served.max_batch_size:
                raise BadRequest(f"more rows than max_batch_size {served.max_batch_size}")
            return single, feeds

        def encode(single: bool, outputs: dict[str, np.ndarray]) -> list:
            return tfaas_output(outputs, single)

        return await self.score(served, decode, encode, started)

    # Repository ------------------------------------------------------------------------------
    def authorize(self, authorization: str | None) -> None:
        """Check the bearer token of a model control request (`authorization`: the header's
        value). Raises Forbidden when control is off, Unauthorized for a missing or wrong
        token (compared in constant time)."""
        if self.settings.workers > 1:
            raise Forbidden(
                "model control is off with --workers > 1 (each worker would differ); run one worker"
            )
        if self.settings.token is None:
            raise Forbidden("model control is off: start the server with --token-file")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.settings.token.encode()
        ):
            raise Unauthorized("missing or wrong bearer token")

    async def index(self, body: bytes) -> list[dict[str, str]]:
        """The repository index for a body ``{}`` or ``{"ready": true|false}``."""
        doc = json_body(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
            raise BadRequest('repository index request must be {} or {"ready": true|false}')
        return self.manager.index(doc.get("ready", False))

    async def load(self, model_name: str, body: bytes) -> dict:
        """(Re)load `model_name` (authorize first). A Triton load with a config or files
        override is refused: ignoring them would load the repository's model instead."""
        doc = json_body(body)
        parameters = doc.get("parameters") if isinstance(doc, dict) else None
        return await self.load_model(model_name, parameters if isinstance(parameters, dict) else {})

    async def load_model(self, model_name: str, parameters: Any) -> dict:
        """(Re)load `model_name` given the request's `parameters` (their names; authorize
        first). BadRequest for a config or file: override (Triton's), which rootml does not do."""
        if any(key == "config" or key.startswith("file:") for key in parameters):
            raise BadRequest(
                "load with a config or file: override is not supported; add the model with "
                f"POST /v2/repository/models/{model_name}/upload"
            )
        await self.manager.load(model_name)
        return {}

    async def unload(self, model_name: str) -> dict:
        """Stop serving `model_name` (authorize first)."""
        await self.manager.unload(model_name)
        return {}

    async def upload(self, model_name: str, body: bytes) -> dict[str, str]:
        """Add `body` (.onnx, or a model folder archive) as a new version of `model_name` and
        serve it once loaded (authorize first)."""
        version = await self.manager.upload(model_name, body, self.settings.max_upload_bytes)
        return {"name": model_name, "version": str(version)}


def served_config(served: ServedVersion) -> dict[str, Any]:
    """The config of a served version as answered: config.pbtxt as read, and for a version with
    dynamic batching (from config.pbtxt or rootml.json) its `dynamic_batching` with
    `preferred_batch_size` [max_batch_size] when none is given: the size the batcher sends a
    batch at, and what Triton reports then (its NormalizeModelConfig); clients such as coffea's
    triton_wrapper take preferred_batch_size[0] as their batch size."""
    config = served.model.config
    if served.batcher is None:
        return config
    batching = config.get("dynamic_batching")
    if batching is None:
        batching = (served.metadata or {}).get("dynamic_batching") or {}
    if not batching.get("preferred_batch_size"):
        batching = {**batching, "preferred_batch_size": [served.max_batch_size]}
    return {**config, "dynamic_batching": batching}
