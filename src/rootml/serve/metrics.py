"""Prometheus metrics of the server, per model and version, in a registry of their own.

A registry per server (not prometheus-client's global one) so several servers in one process,
as in tests, do not share counters. With ``--workers N`` each worker process counts its own.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

_LABELS = ("model", "version")
_SECONDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
_ROWS = tuple(float(2**k) for k in range(14))


class ServeMetrics:
    """Counters and histograms of inference: requests, failures, latency, queue time, batches."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rootml_inference_requests", "Infer requests received", _LABELS, registry=r
        )
        self.failures = Counter(
            "rootml_inference_failures", "Infer requests that failed", _LABELS, registry=r
        )
        self.latency = Histogram(
            "rootml_inference_latency_seconds",
            "Time from request body read to response encoded",
            _LABELS,
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_time = Histogram(
            "rootml_queue_time_seconds",
            "Time a request waited before its onnxruntime run started",
            _LABELS,
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_size = Histogram(
            "rootml_batch_size", "Rows per onnxruntime run", _LABELS, buckets=_ROWS, registry=r
        )
        self.runs = Counter("rootml_session_runs", "onnxruntime session runs", _LABELS, registry=r)
        # The labelled series of each model version, looked up once: labels() takes a lock and
        # builds its key on every call, a few us per request.
        self._series: dict[tuple[str, int], tuple] = {}

    def _of(self, model: str, version: int) -> tuple:
        series = self._series.get((model, version))
        if series is None:
            labels = (model, str(version))
            series = self._series[model, version] = tuple(
                metric.labels(*labels)
                for metric in (
                    self.requests,
                    self.failures,
                    self.latency,
                    self.queue_time,
                    self.batch_size,
                    self.runs,
                )
            )
        return series

    def observe_run(self, model: str, version: int, rows: int, queue_times: list[float]) -> None:
        """Record one onnxruntime run of `rows` rows serving requests that waited `queue_times` s."""
        *_, queue, batch_size, runs = self._of(model, version)
        runs.inc()
        batch_size.observe(rows)
        for seconds in queue_times:
            queue.observe(seconds)

    def observe_request(self, model: str, version: int, seconds: float, ok: bool) -> None:
        """Record one infer request of a known model: its latency and whether it failed."""
        requests, failures, latency, *_ = self._of(model, version)
        requests.inc()
        latency.observe(seconds)
        if not ok:
            failures.inc()

    def render(self) -> bytes:
        """The text exposition format served at /metrics."""
        return generate_latest(self.registry)
