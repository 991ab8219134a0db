"""What the server's OpenAPI schema says: response bodies, status codes, the infer request body.

The tensor path is not parsed by pydantic (see app.py), so its request and response bodies are
described here as plain JSON Schema; the other routes use the pydantic models below. Each route
lists exactly the statuses it can answer, every error body being ``{"error": message}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from rootml.protocol import DTYPES


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    # Where the version runs: execution_provider, device, instances (as MLServer, V2 parameters).
    parameters: dict[str, str | int] = {}


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class IndexEntry(BaseModel):
    name: str
    version: str
    state: str
    reason: str


class UploadAnswer(BaseModel):
    name: str
    version: str


class Duration(BaseModel):
    count: int
    ns: int


class InferStatistics(BaseModel):
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class BatchStatistics(BaseModel):
    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


class ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: InferStatistics
    batch_stats: list[BatchStatistics]


class Statistics(BaseModel):
    model_stats: list[ModelStatistics]


class ErrorBody(BaseModel):
    error: str


_DESCRIPTIONS = {
    400: "malformed request, invalid model name, or a request that does not fit the model",
    401: "missing or wrong bearer token",
    403: "model control is off (no --token-file, or several workers)",
    404: "unknown model, version or path",
    408: "the request body did not arrive within --body-timeout (plus 1 s per MiB)",
    413: "body over the size limit, on the wire or decompressed",
    500: "the model failed on a well-formed request",
    503: "model not ready, queue full or request deadline exceeded",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that answers `statuses` with ``{"error": message}``."""
    return {s: {"model": ErrorBody, "description": _DESCRIPTIONS[s]} for s in statuses}


# Every route with a path parameter can 404: a value the router cannot match (an encoded '/').
MODEL_ERRORS = errors(400, 404, 503)
INFER_ERRORS = errors(400, 404, 408, 413, 500, 503)
CONTROL_ERRORS = errors(400, 401, 403, 404, 408, 413)

_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "enum": list(DTYPES)},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
        "data": {"type": "array", "description": "row-major values, flat or nested"},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_output": {"type": "boolean"}},
        },
        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data": {"type": "boolean"}},
                    },
                },
            },
        },
    },
}
_INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "model_version", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": _TENSOR},
    },
}
_BINARY = {"type": "string", "format": "binary"}
_HEADER_LENGTH = {
    "description": "bytes of JSON header before the raw tensors (binary tensor extension)",
    "schema": {"type": "integer", "minimum": 1},
}

INFER_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": "Inference-Header-Content-Length", "in": "header", "required": False}
        | _HEADER_LENGTH,
        {
            "name": "Content-Encoding",
            "in": "header",
            "required": False,
            "description": "identity (or empty), gzip, x-gzip or deflate, in any case (RFC 9110); "
            "anything else is a 400",
            "schema": {"type": "string"},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _INFER_REQUEST},
            "application/octet-stream": {
                "schema": _BINARY,
                "description": "JSON header of Inference-Header-Content-Length bytes, then raw "
                "little-endian tensors in the header's order",
            },
        },
    },
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "outputs as JSON, or a JSON header then raw tensors when asked for binary",
        "content": {
            "application/json": {"schema": _INFER_RESPONSE},
            "application/octet-stream": {"schema": _BINARY},
        },
        "headers": {"Inference-Header-Content-Length": _HEADER_LENGTH},
    },
    **INFER_ERRORS,
}
TFAAS_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["keys", "values", "model"],
                    "properties": {
                        "keys": {"type": "array", "items": {"type": "string"}},
                        "values": {"type": "array", "description": "one row, or a list of rows"},
                        "model": {"type": "string"},
                    },
                }
            }
        },
    }
}
TFAAS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "probabilities: one list per row, or one list for a single row",
        "content": {"application/json": {"schema": {"type": "array"}}},
    },
    **INFER_ERRORS,
}
INDEX_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        },
    }
}
UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {
                "schema": _BINARY,
                "description": "a single .onnx file, or a model folder as .tar.gz or .zip",
            }
        },
    }
}


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI schema without FastAPI's 422 answers, which this server never gives
    (a failed validation is a 400 ``{"error"}``)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
