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


def test_statistics_add_up_every_observation():
    """Triton's statistics of ServeMetrics against plain sums of the same observations."""
    rng = np.random.default_rng(5)
    metrics = ServeMetrics()
    requests = rng.exponential(0.004, (200, 3))  # latency, decode, encode
    ok = rng.random(200) > 0.2
    rows = rng.integers(1, 9, 200)
    for (seconds, decode, encode), good, n in zip(requests, ok, rows):
        metrics.observe_request("m", 3, float(seconds), bool(good), int(n), decode, encode)
    runs = [
        (int(rng.integers(1, 4)), list(rng.exponential(0.001, 3)), float(t))
        for t in rng.exponential(0.002, 30)
    ]
    for size, waits, run in runs:
        metrics.observe_execution("m", 3, size, waits, run, 1e-5, 2e-5)
    metrics.observe_request("other", 1, 1.0, True, 5)

    def ns(values) -> int:
        return sum(int(v * 1e9) for v in values)

    (stats,) = metrics.stats([("m", 3)])["model_stats"]
    inference = stats["inference_stats"]
    assert (stats["name"], stats["version"]) == ("m", "3")
    assert stats["inference_count"] == rows[ok].sum() and stats["execution_count"] == len(runs)
    assert inference["success"] == {"count": ok.sum(), "ns": ns(requests[ok, 0])}
    assert inference["fail"] == {"count": (~ok).sum(), "ns": ns(requests[~ok, 0])}
    assert inference["compute_input"] == {"count": ok.sum(), "ns": ns(requests[ok, 1])}
    assert inference["compute_output"] == {"count": ok.sum(), "ns": ns(requests[ok, 2])}
    # Per run: its requests' waits added up, and the run counted once per request in it.
    waits = sum(len(ws) for _, ws, _ in runs)
    assert inference["queue"] == {"count": waits, "ns": ns(sum(ws) for _, ws, _ in runs)}
    assert inference["compute_infer"] == {"count": waits, "ns": ns(3 * t for _, _, t in runs)}
    for batch in stats["batch_stats"]:
        size = batch["batch_size"]
        mine = [t for s, _, t in runs if s == size]
        assert batch["compute_infer"] == {"count": len(mine), "ns": ns(mine)}
        assert batch["compute_input"]["count"] == len(mine)
    assert sorted(b["batch_size"] for b in stats["batch_stats"]) == sorted({s for s, _, _ in runs})
    (empty,) = metrics.stats([("m", 4)])["model_stats"]
    assert empty["inference_count"] == 0 and empty["inference_stats"]["success"]["count"] == 0
