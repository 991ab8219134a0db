"""ServeMetrics against plain numpy counts of the same observations, read back from the text format."""

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from rootml.serve.metrics import _ROWS, _SECONDS, ServeMetrics


def _samples(metrics: ServeMetrics, version: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.labels["version"] == version:
                out[(s.name, s.labels.get("le"))] = s.value
    return out


def test_counts_and_buckets_match_numpy():
    rng = np.random.default_rng(3)
    latencies = rng.exponential(0.004, 500)
    latencies[:5] = _SECONDS[:5]  # on a bound: counted in that bucket (value <= le)
    ok = rng.random(500) > 0.1
    rows = rng.integers(1, 5000, 40)
    waits = rng.exponential(0.001, (40, 3))
    metrics = ServeMetrics()
    for seconds, good in zip(latencies, ok):
        metrics.observe_request("m", 2, float(seconds), bool(good))
    for n, w in zip(rows, waits):
        metrics.observe_run("m", 2, int(n), list(w))
    metrics.observe_request("m", 1, 0.5, True)  # another version stays apart

    got = _samples(metrics, "2")
    assert got[("rootml_inference_requests_total", None)] == 500
    assert got[("rootml_inference_failures_total", None)] == (~ok).sum()
    assert got[("rootml_session_runs_total", None)] == 40
    for name, values, bounds in (
        ("rootml_inference_latency_seconds", latencies, _SECONDS),
        ("rootml_queue_time_seconds", waits.ravel(), _SECONDS),
        ("rootml_batch_size", rows, _ROWS),
    ):
        assert got[(f"{name}_count", None)] == len(values)
        np.testing.assert_allclose(got[(f"{name}_sum", None)], values.sum())
        for bound in bounds:
            le = next(k[1] for k in got if k[0] == f"{name}_bucket" and float(k[1]) == bound)
            assert got[(f"{name}_bucket", le)] == (values <= bound).sum(), (name, bound)
        assert got[(f"{name}_bucket", "+Inf")] == len(values)
    assert _samples(metrics, "1")[("rootml_inference_requests_total", None)] == 1
