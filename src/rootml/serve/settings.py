"""What `rootml serve` configures, in one place (the CLI and uvicorn's worker processes read it)."""

from __future__ import annotations

import dataclasses

from rootml import defaults
from rootml._runtime import usable_cores

MiB = defaults.MiB


@dataclasses.dataclass
class ServeSettings:
    """Everything `rootml serve` configures. `token` None turns load/unload/upload off."""

    repo: str
    token: str | None = None
    max_body_bytes: int = defaults.SERVE_MAX_BODY_BYTES
    max_upload_bytes: int = defaults.SERVE_MAX_UPLOAD_BYTES
    request_timeout_s: float = defaults.SERVE_REQUEST_TIMEOUT_S
    # A request body must arrive within this many seconds, plus one per MiB received (so a
    # steady sender of 1 MiB/s is never cut off); slower or stalled senders get 408.
    body_timeout_s: float = defaults.SERVE_BODY_TIMEOUT_S
    # Check the repository every this many seconds and load what changed (Triton's poll mode);
    # 0: only at start and on load requests.
    repository_poll_secs: float = 0.0
    max_queue: int = defaults.SERVE_MAX_QUEUE
    workers: int = 1
    threads_per_run: int = 1
    run_slots: int | None = None  # default: the cores of this worker
    inline_run_us: float = 100.0  # runs measured at most this long run on the event loop
    device: str = defaults.SERVE_DEVICE
    # gRPC (inference.GRPCInferenceService) on grpc_host:grpc_port next to HTTP; 0: off.
    grpc_port: int = 0
    grpc_host: str = "127.0.0.1"
    # PEM certificate and key: HTTPS and gRPC over TLS; None: plain.
    tls_cert: str | None = None
    tls_key: str | None = None

    def slots(self) -> int:
        """onnxruntime runs in flight per worker: its share of the cores / threads per run."""
        if self.run_slots:
            return self.run_slots
        cores = usable_cores()
        return max(1, cores // (max(1, self.workers) * max(1, self.threads_per_run)))
