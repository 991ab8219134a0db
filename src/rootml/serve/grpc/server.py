"""The grpc.aio server of `rootml serve --grpc-port`, on the HTTP server's event loop.

It runs in the same process and loop as the HTTP app, so both reach the same `Endpoints`: one
model manager, one batcher per version, one set of metrics. Its limits are the HTTP side's: a
request message over `max_body_bytes` is refused by gRPC itself (RESOURCE_EXHAUSTED), the
per-request deadline and the bounded queue are the model manager's (DEADLINE_EXCEEDED,
UNAVAILABLE), and a client's own gRPC deadline cancels its request.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from rootml.errors import ConfigError
from rootml.serve.endpoints import Endpoints
from rootml.serve.grpc.service import InferenceService, handlers
from rootml.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def address(host: str, port: int) -> str:
    """host:port as gRPC takes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def server_credentials(cert: str, key: str) -> grpc.ServerCredentials:
    """TLS credentials from a PEM certificate (chain) and its private key. ConfigError naming
    the file that cannot be read."""
    pem = {}
    for what, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            pem[what] = Path(path).read_bytes()
        except OSError as err:
            raise ConfigError(f"{what} {path}: cannot read it: {err}") from None
    return grpc.ssl_server_credentials([(pem["--tls-key"], pem["--tls-cert"])])


async def start_grpc(endpoints: Endpoints, settings: ServeSettings) -> grpc.aio.Server:
    """Start serving `endpoints` over gRPC on settings.grpc_host:grpc_port (TLS with
    settings.tls_cert and tls_key); the caller stops the server returned. ConfigError when the
    port cannot be bound."""
    options = [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        # Worker processes (--workers) share the port, the kernel spreading calls over them; one
        # process alone must fail on a port that another server holds, not share it.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((handlers(InferenceService(endpoints)),))
    where = address(settings.grpc_host, settings.grpc_port)
    try:
        if settings.tls_cert:
            port = server.add_secure_port(
                where, server_credentials(settings.tls_cert, settings.tls_key)
            )
        else:
            port = server.add_insecure_port(where)
    except RuntimeError as err:
        port, reason = 0, err
    else:
        reason = "in use or not an address of this machine"
    if not port:
        raise ConfigError(f"--grpc-port {settings.grpc_port}: cannot listen on {where}: {reason}")
    await server.start()
    log.info("gRPC (%s) on %s", "TLS" if settings.tls_cert else "plain", where)
    return server
