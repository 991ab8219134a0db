"""The server's gRPC front-end: the Open Inference Protocol's `inference.GRPCInferenceService`.

`rootml serve --grpc-port N` serves it next to HTTP, in the same process and event loop, over the
same `Endpoints` (serve.endpoints): one model manager, batching, limits, metrics and statistics
for both. The wire format is grpc_service.proto beside this file (Triton's definition, see its
header); its messages are built from a checked-in descriptor set (`messages`), so the server
needs grpcio and protobuf only.

- messages.py   the protobuf classes, in a descriptor pool of their own
- tensors.py    ModelInferRequest -> codec.InferRequest; outputs -> ModelInferResponse
- service.py    one async method per RPC, errors answered through serve.errors.grpc_answer
- server.py     the grpc.aio server: port, TLS, message size limit

Nothing here is imported unless a gRPC port is asked for.
"""
