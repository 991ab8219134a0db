"""The protocol's protobuf messages, built at import from the checked-in descriptor set.

The classes live in a descriptor pool of their own, not protobuf's default one: a process that
also imports tritonclient.grpc (whose generated modules register the same message names from
Triton's file) holds both without a clash, and no generated-code version check ties rootml to
the protobuf release that made them. `messages["ModelInferRequest"]` is the class of
inference.ModelInferRequest.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from rootml.serve.grpc._descriptors import FILE_DESCRIPTOR_SET

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"


def _build() -> tuple[descriptor_pool.DescriptorPool, dict[str, type]]:
    files = descriptor_pb2.FileDescriptorSet.FromString(FILE_DESCRIPTOR_SET)
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    classes = message_factory.GetMessageClassesForFiles([f.name for f in files.file], pool)
    prefix = PACKAGE + "."
    return pool, {name[len(prefix) :]: cls for name, cls in classes.items()}


POOL, messages = _build()


def service_methods() -> dict[str, tuple[type, type, bool, bool]]:
    """The service's RPCs: name -> (request class, response class, client streams, server
    streams), as the .proto declares them."""
    service = POOL.FindServiceByName(SERVICE)
    return {
        m.name: (
            messages[m.input_type.full_name[len(PACKAGE) + 1 :]],
            messages[m.output_type.full_name[len(PACKAGE) + 1 :]],
            m.client_streaming,
            m.server_streaming,
        )
        for m in service.methods
    }
