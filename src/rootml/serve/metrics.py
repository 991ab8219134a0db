"""What the server counts per model version: Prometheus metrics and Triton's statistics.

Prometheus metrics (served at /metrics) live in a registry of their own. The statistics
extension (`stats`: /v2/models/{m}/stats, ModelStatistics over gRPC) reports the same requests
and runs in Triton's format: counts and cumulative nanoseconds per model version, per request
(success, fail, queue, compute_input, compute_infer, compute_output) and per batch size.

A registry per server (not prometheus-client's global one) so several servers in one process,
as in tests, do not share counters. With ``--workers N`` each worker process counts its own.

The counts are plain numbers under one lock, rendered by a custom collector when /metrics is
read: prometheus-client's Counter and Histogram objects cost ~1 us per update through their
layers of calls and locks, and a single-row request makes eight updates.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any

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


# Triton's per-request durations (InferStatistics) and per-batch-size ones (InferBatchStatistics).
_REQUEST_STATS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_BATCH_STATS = ("compute_input", "compute_infer", "compute_output")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class _Series:
    """Everything counted for one model version. `durations` and each of `batches` hold
    [count, ns] pairs of Triton's statistics, by name."""

    __slots__ = (
        "requests",
        "failures",
        "runs",
        "latency",
        "queue_time",
        "batch_size",
        "durations",
        "batches",
        "inferences",
        "executions",
        "last_ms",
    )

    def __init__(self) -> None:
        self.requests = self.failures = self.runs = 0
        self.latency, self.queue_time = _Histogram(_SECONDS), _Histogram(_SECONDS)
        self.batch_size = _Histogram(_ROWS)
        self.durations = {name: [0, 0] for name in _REQUEST_STATS}
        self.batches: dict[int, dict[str, list[int]]] = {}
        self.inferences = self.executions = self.last_ms = 0

    def add(self, name: str, count: int, seconds: float) -> None:
        pair = self.durations[name]
        pair[0] += count
        pair[1] += _ns(seconds)

    def stats(self, name: str, version: int) -> dict[str, Any]:
        """This version's statistics in Triton's JSON form ($model_stat)."""

        def duration(pair: list[int]) -> dict[str, int]:
            return {"count": pair[0], "ns": pair[1]}

        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_ms,
            "inference_count": self.inferences,
            "execution_count": self.executions,
            "inference_stats": {k: duration(v) for k, v in self.durations.items()},
            "batch_stats": [
                {"batch_size": rows, **{k: duration(v) for k, v in stats.items()}}
                for rows, stats in sorted(self.batches.items())
            ],
        }


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

    def observe_execution(
        self,
        model: str,
        version: int,
        rows: int,
        queue_times: list[float],
        run_s: float,
        gather_s: float = 0.0,
        split_s: float = 0.0,
    ) -> None:
        """Record one run that succeeded (statistics): `rows` rows of requests that waited
        `queue_times` s, run in `run_s` s; `gather_s` and `split_s` s to put their inputs
        together and to split the outputs (batched runs). Each request is counted as having
        taken the whole run, as Triton counts compute_infer."""
        series = self._of(model, version)
        with self._lock:
            series.executions += 1
            series.add("queue", len(queue_times), sum(queue_times))
            series.add("compute_infer", len(queue_times), run_s * len(queue_times))
            batch = series.batches.get(rows)
            if batch is None:
                batch = series.batches[rows] = {name: [0, 0] for name in _BATCH_STATS}
            for name, seconds in zip(_BATCH_STATS, (gather_s, run_s, split_s)):
                batch[name][0] += 1
                batch[name][1] += _ns(seconds)

    def observe_request(
        self,
        model: str,
        version: int,
        seconds: float,
        ok: bool,
        rows: int = 0,
        decode_s: float = 0.0,
        encode_s: float = 0.0,
    ) -> None:
        """Record one infer request of a known model: its latency and whether it failed; for
        the statistics also its `rows` (batch entries), and the s it took to decode into model
        inputs and to encode the answer (a request that succeeded)."""
        series = self._of(model, version)
        now_ms = int(time.time() * 1000)
        with self._lock:
            series.requests += 1
            series.failures += not ok
            series.latency.observe(seconds)
            series.last_ms = now_ms
            if ok:
                series.inferences += rows
                series.add("success", 1, seconds)
                series.add("compute_input", 1, decode_s)
                series.add("compute_output", 1, encode_s)
            else:
                series.add("fail", 1, seconds)

    def stats(self, versions: list[tuple[str, int]]) -> dict[str, Any]:
        """Triton's statistics response ({"model_stats": [...]}) for the model `versions`
        [(name, version)], zeros for a version that served nothing yet."""
        empty = _Series()
        with self._lock:
            return {
                "model_stats": [
                    self._series.get((name, version), empty).stats(name, version)
                    for name, version in versions
                ]
            }

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
