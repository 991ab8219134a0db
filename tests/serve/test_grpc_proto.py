"""rootml's .proto files against Triton's: every message, field number and type as the public
definition has them (tritonclient.grpc's generated modules), so every client of Triton's
protocol reads rootml's messages; and the checked-in descriptor set is made from them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from rootml.errors import (
    BadRequest,
    BodyTooLarge,
    DeadlineExceeded,
    Forbidden,
    InferenceFailed,
    ModelError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    RequestTimeout,
    Unauthorized,
)
from rootml.serve.errors import grpc_answer
from rootml.serve.grpc.messages import POOL, SERVICE, messages, service_methods

ROOT = Path(__file__).resolve().parents[2]


def _triton(name: str):
    for module in (service_pb2, model_config_pb2):
        if hasattr(module, name.split(".")[0]):
            return module.DESCRIPTOR.pool.FindMessageTypeByName(f"inference.{name}")
    raise AssertionError(f"Triton's definition has no message {name}")


def _fields(descriptor) -> dict:
    return {
        f.name: (f.number, f.type, f.label if hasattr(f, "label") else None, _type_name(f))
        for f in descriptor.fields
    }


def _type_name(field) -> str | None:
    target = field.message_type or field.enum_type
    return target.full_name if target is not None else None


def _walk(descriptor, prefix=""):
    yield prefix + descriptor.name, descriptor
    for nested in descriptor.nested_types:
        if not nested.GetOptions().map_entry:
            yield from _walk(nested, prefix + descriptor.name + ".")


@pytest.mark.parametrize("file", ["grpc_service.proto", "model_config.proto"])
def test_every_message_and_field_is_tritons(file):
    ours = POOL.FindFileByName(file)
    checked = 0
    for top in ours.message_types_by_name.values():
        for name, descriptor in _walk(top):
            assert _fields(descriptor).items() <= _fields(_triton(name)).items(), name
            checked += 1
    for name, enum in ours.enum_types_by_name.items():
        theirs = model_config_pb2.DESCRIPTOR.enum_types_by_name[name]
        assert {v.name: v.number for v in enum.values} == {v.name: v.number for v in theirs.values}
    assert checked > (40 if file == "model_config.proto" else 30)


def test_rpcs_are_tritons():
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert SERVICE == theirs.full_name
    for name, (request, response, client_streams, server_streams) in service_methods().items():
        method = theirs.methods_by_name[name]
        assert request.DESCRIPTOR.full_name == method.input_type.full_name
        assert response.DESCRIPTOR.full_name == method.output_type.full_name
        assert (client_streams, server_streams) == (
            method.client_streaming,
            method.server_streaming,
        )
    assert "ModelInfer" in service_methods() and "RepositoryModelLoad" in service_methods()
    # A message of ours reads back in Triton's class, field for field.
    request = messages["ModelInferRequest"](model_name="m", id="7", raw_input_contents=[b"ab"])
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    theirs = service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert (theirs.model_name, theirs.id, list(theirs.inputs[0].shape)) == ("m", "7", [1, 2])


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="needs grpcio-tools")
def test_descriptor_set_is_made_from_the_proto_files():
    command = [sys.executable, str(ROOT / "scripts" / "generate_grpc.py"), "--check"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_grpc_codes_of_each_meaning():
    codes = {
        BadRequest("x"): "INVALID_ARGUMENT",
        ModelError("x"): "INVALID_ARGUMENT",
        Unauthorized("x"): "UNAUTHENTICATED",
        Forbidden("x"): "PERMISSION_DENIED",
        ModelNotFound("x"): "NOT_FOUND",
        RequestTimeout("x"): "DEADLINE_EXCEEDED",
        DeadlineExceeded("x"): "DEADLINE_EXCEEDED",
        BodyTooLarge("x"): "RESOURCE_EXHAUSTED",
        ModelNotReady("x"): "UNAVAILABLE",
        Overloaded("x"): "UNAVAILABLE",
        InferenceFailed("x"): "INTERNAL",
    }
    for err, code in codes.items():
        assert grpc_answer(err) == (code, "x"), type(err)
    assert grpc_answer(KeyError("secret")) == ("INTERNAL", "internal error: KeyError")


CONFIG = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] reshape { shape: [] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] label_filename: "labels.txt" } ]
instance_group [ { kind: KIND_CPU count: 2 } ]
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { timeout_action: DELAY max_queue_size: 3 }
}
optimization {
  priority: PRIORITY_MAX
  execution_accelerators {
    gpu_execution_accelerator : [ { name : "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ]
  }
}
parameters { key: "a" value { string_value: "b" } }
parameters { key: "c" value { string_value: "d" } }
version_policy { latest { num_versions: 2 } }
"""


def test_a_config_pbtxt_as_tritons_model_config_message():
    """rootml's reading of a config.pbtxt (maps, enums, nested and repeated messages), as the
    ModelConfig RPC sends it, equals protobuf's own parse of the text into Triton's message."""
    from google.protobuf import text_format

    from rootml.export.pbtxt import parse_config
    from rootml.serve.grpc.service import json_form

    doc = json_form(parse_config(CONFIG), messages["ModelConfig"].DESCRIPTOR)
    ours = json_format.ParseDict({"config": doc}, messages["ModelConfigResponse"]())
    expected = text_format.Parse(CONFIG, model_config_pb2.ModelConfig())
    theirs = service_pb2.ModelConfigResponse.FromString(ours.SerializeToString())
    assert theirs.config == expected
    assert (
        theirs.config.optimization.priority == model_config_pb2.ModelOptimizationPolicy.PRIORITY_MAX
    )
