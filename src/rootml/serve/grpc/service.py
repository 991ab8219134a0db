"""The RPCs of `inference.GRPCInferenceService`, each an async method over `Endpoints`.

Every method takes the request message and the call's context and returns the response
message; it reads nothing but them and calls the same `Endpoints` methods the HTTP routes call.
Errors are raised as rootml.errors meanings and answered, by `handlers`, with the status code
and message of serve.errors.grpc_answer: a bad request is INVALID_ARGUMENT, an unknown model
NOT_FOUND (its name in the message), never a crash of the server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from rootml.errors import NotFound, Unavailable
from rootml.serve.endpoints import PARSE_INLINE_BYTES, Endpoints
from rootml.serve.errors import EXPECTED, grpc_answer
from rootml.serve.grpc.messages import SERVICE, messages, service_methods
from rootml.serve.grpc.tensors import decode_request, encode_response
from rootml.serve.physics import request_feeds

log = logging.getLogger(__name__)


def _message(name: str, doc: dict[str, Any]):
    """The message `name` holding the JSON-like `doc` (as the HTTP routes answer it)."""
    return json_format.ParseDict(doc, messages[name]())


def _repeated(field) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.29; `label` before
    return field.label == field.LABEL_REPEATED if repeated is None else repeated


def json_form(doc: Any, descriptor) -> Any:
    """A config dict as rootml reads config.pbtxt (rootml.export.pbtxt) in protobuf's JSON form
    for the message `descriptor`: map fields, key/value entries in text format, as objects; a
    field the message does not have left out (logged)."""
    out = {}
    for key, value in doc.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            log.warning("config field %r is not in Triton's %s: left out", key, descriptor.name)
            continue
        target = field.message_type
        if target is not None and target.GetOptions().map_entry:
            entries = value if isinstance(value, list) else [value]
            inner = target.fields_by_name["value"].message_type
            out[key] = {
                str(e.get("key", "")): json_form(e.get("value", {}), inner)
                if inner
                else e.get("value")
                for e in entries
            }
        elif target is not None:
            items = [json_form(v, target) for v in (value if isinstance(value, list) else [value])]
            out[key] = items if _repeated(field) else items[0]
        else:
            out[key] = value if _repeated(field) or not isinstance(value, list) else value[0]
    return out


def _version(version: str) -> str | None:
    return version or None  # an empty version is the model's default, as over HTTP


class InferenceService:
    """The service's RPCs over one server's `Endpoints`."""

    def __init__(self, endpoints: Endpoints):
        self.endpoints = endpoints

    # Health and metadata ---------------------------------------------------------------------
    async def ServerLive(self, request, context):
        return messages["ServerLiveResponse"](live=True)

    async def ServerReady(self, request, context):
        return messages["ServerReadyResponse"](ready=self.endpoints.ready)

    async def ModelReady(self, request, context):
        # A model that is unknown or not loaded is not ready, not an error (as Triton answers).
        try:
            await self.endpoints.model_ready(request.name, _version(request.version))
        except (NotFound, Unavailable):
            return messages["ModelReadyResponse"](ready=False)
        return messages["ModelReadyResponse"](ready=True)

    async def ServerMetadata(self, request, context):
        return _message("ServerMetadataResponse", await self.endpoints.server_metadata())

    async def ModelMetadata(self, request, context):
        doc = await self.endpoints.model_metadata(request.name, _version(request.version))
        # Where the version runs (HTTP's `parameters`) has no field in Triton's message.
        doc.pop("parameters", None)
        return _message("ModelMetadataResponse", doc)

    async def ModelConfig(self, request, context):
        config = await self.endpoints.model_config(request.name, _version(request.version))
        descriptor = messages["ModelConfig"].DESCRIPTOR
        return _message("ModelConfigResponse", {"config": json_form(config, descriptor)})

    async def ModelStatistics(self, request, context):
        doc = await self.endpoints.model_stats(request.name, _version(request.version))
        return _message("ModelStatisticsResponse", doc)

    # Inference -------------------------------------------------------------------------------
    async def ModelInfer(self, request, context):
        started = time.perf_counter()
        served = self.endpoints.manager.get(request.model_name, _version(request.model_version))

        def decode():
            decoded = decode_request(request)
            return decoded, request_feeds(served, decoded)

        def encode(decoded, results):
            names = [n for n, _ in decoded.outputs] if decoded.outputs else served.output_names
            return encode_response(served.name, str(served.version), names, results, decoded.id)

        offload = request.ByteSize() > PARSE_INLINE_BYTES
        return await self.endpoints.score(served, decode, encode, started, offload)

    async def ModelStreamInfer(self, requests, context) -> AsyncIterator:
        # Each request answered in turn; one that fails is answered with its error message and
        # the stream goes on (Triton's way).
        async for request in requests:
            try:
                answer = await self.ModelInfer(request, context)
                yield messages["ModelStreamInferResponse"](infer_response=answer)
            except Exception as err:
                _log_unexpected(err, "ModelStreamInfer")
                message = grpc_answer(err)[1]
                yield messages["ModelStreamInferResponse"](error_message=message)

    # Repository ------------------------------------------------------------------------------
    def _authorize(self, context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        self.endpoints.authorize(metadata.get("authorization"))

    async def RepositoryIndex(self, request, context):
        entries = self.endpoints.manager.index(request.ready)
        return _message("RepositoryIndexResponse", {"models": entries})

    async def RepositoryModelLoad(self, request, context):
        self._authorize(context)
        await self.endpoints.load_model(request.model_name, list(request.parameters))
        return messages["RepositoryModelLoadResponse"]()

    async def RepositoryModelUnload(self, request, context):
        self._authorize(context)
        await self.endpoints.unload(request.model_name)
        return messages["RepositoryModelUnloadResponse"]()


def _log_unexpected(err: BaseException, method: str) -> None:
    if not isinstance(err, EXPECTED):
        log.error("gRPC %s failed", method, exc_info=err)


def _answering_errors(method: Callable, name: str) -> Callable:
    """`method` (a unary RPC) with any exception answered by its status code and message."""

    async def call(request, context):
        try:
            return await method(request, context)
        except Exception as err:
            _log_unexpected(err, name)
            code, message = grpc_answer(err)
            await context.abort(grpc.StatusCode[code], message)

    return call


def handlers(service: InferenceService) -> grpc.GenericRpcHandler:
    """The generic handler serving every RPC of the .proto's service with `service`'s methods."""
    table = {}
    for name, (request, response, client_streams, server_streams) in service_methods().items():
        method = getattr(service, name)
        options = {
            "request_deserializer": request.FromString,
            "response_serializer": response.SerializeToString,
        }
        if client_streams and server_streams:
            table[name] = grpc.stream_stream_rpc_method_handler(method, **options)
        else:
            table[name] = grpc.unary_unary_rpc_method_handler(
                _answering_errors(method, name), **options
            )
    return grpc.method_handlers_generic_handler(SERVICE, table)
