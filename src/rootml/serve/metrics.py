"""Prometheus metrics of the server, per model and version, in a registry of their own.

A registry per server (not prometheus-client's global one) so several servers in one process,
as in tests, do not share counters. With ``--workers N`` each worker process counts its own.

The counts are plain numbers under one lock, rendered by a custom collector when /metrics is
read: prometheus-client's Counter and Histogram objects cost ~1 us per update through their
layers of calls and locks, and a single-row request makes eight updates.
"""

from __future__ import annotations

import threading
from bisect import bisect_left

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

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


class _Histogram:
    """Counts per bucket (value <= bound; the last one is +Inf) and the sum of the values."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds, self.counts, self.sum = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric(labels, buckets, self.sum)


class _Series:
    """Everything counted for one model version."""

    __slots__ = ("requests", "failures", "runs", "latency", "queue_time", "batch_size")

    def __init__(self) -> None:
        self.requests = self.failures = self.runs = 0
        self.latency, self.queue_time = _Histogram(_SECONDS), _Histogram(_SECONDS)
        self.batch_size = _Histogram(_ROWS)


class ServeMetrics:
    """Counters and histograms of inference: requests, failures, latency, queue time, batches."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self._series: dict[tuple[str, int], _Series] = {}
        # Runs are observed from run threads as well as from the event loop.
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def _of(self, model: str, version: int) -> _Series:
        series = self._series.get((model, version))
        if series is None:
            series = self._series.setdefault((model, version), _Series())
        return series

    def observe_run(self, model: str, version: int, rows: int, queue_times: list[float]) -> None:
        """Record one onnxruntime run of `rows` rows serving requests that waited `queue_times` s."""
        series = self._of(model, version)
        with self._lock:
            series.runs += 1
            series.batch_size.observe(rows)
            for seconds in queue_times:
                series.queue_time.observe(seconds)

    def observe_request(self, model: str, version: int, seconds: float, ok: bool) -> None:
        """Record one infer request of a known model: its latency and whether it failed."""
        series = self._of(model, version)
        with self._lock:
            series.requests += 1
            series.failures += not ok
            series.latency.observe(seconds)

    def collect(self):
        """The metric families (prometheus-client's collector protocol), read under the lock."""
        requests = CounterMetricFamily(
            "rootml_inference_requests", "Infer requests received", labels=_LABELS
        )
        failures = CounterMetricFamily(
            "rootml_inference_failures", "Infer requests that failed", labels=_LABELS
        )
        runs = CounterMetricFamily(
            "rootml_session_runs", "onnxruntime session runs", labels=_LABELS
        )
        latency = HistogramMetricFamily(
            "rootml_inference_latency_seconds",
            "Time from request body read to response encoded",
            labels=_LABELS,
        )
        queue_time = HistogramMetricFamily(
            "rootml_queue_time_seconds",
            "Time a request waited before its onnxruntime run started",
            labels=_LABELS,
        )
        batch_size = HistogramMetricFamily(
            "rootml_batch_size", "Rows per onnxruntime run", labels=_LABELS
        )
        with self._lock:
            for (model, version), series in sorted(self._series.items()):
                labels = [model, str(version)]
                requests.add_metric(labels, series.requests)
                failures.add_metric(labels, series.failures)
                runs.add_metric(labels, series.runs)
                series.latency.add_to(latency, labels)
                series.queue_time.add_to(queue_time, labels)
                series.batch_size.add_to(batch_size, labels)
        return [requests, failures, latency, queue_time, batch_size, runs]

    def render(self) -> bytes:
        """The text exposition format served at /metrics."""
        return generate_latest(self.registry)
