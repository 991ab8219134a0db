"""Soak: 32 concurrent clients, mixed JSON/binary infer on a plain and a dynamically batched model,
while a new version of the batched model is uploaded every ~2 s. No request may fail or get a
wrong answer, and the server's memory must stay flat.

Bounded: SOAK_SECONDS (10 s; 60 s with ROOTML_SOAK=1), longer on a machine too loaded to reach
MIN_REQUESTS and MIN_UPLOADS in that time (at most SOAK_LIMIT). RSS is read from /proc/<pid>/status every
second. Flat means: the median of the last third of the samples is within 10% + 20 MB of the
median of the first third. Figures go to the reliability report (see the `results` fixture).
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from rootml.client import Client
from rootml.export.repository import add_onnx_model
from rootml.protocol import decode_infer_response, encode_infer_request
from tests.serve.conftest import TOKEN, Server, make_inputs

SOAK_SECONDS = 60.0 if os.environ.get("ROOTML_SOAK") == "1" else 10.0
CLIENTS = 32
UPLOAD_EVERY_S = 2.0
# The least a soak must hold, whatever the machine's speed: a loaded machine soaks longer (up
# to SOAK_LIMIT) until it has, a quiet one stops after SOAK_SECONDS.
MIN_REQUESTS = 100 * SOAK_SECONDS
MIN_UPLOADS = SOAK_SECONDS / UPLOAD_EVERY_S - 2
SOAK_LIMIT = 6 * SOAK_SECONDS
RSS_EVERY_S = 1.0
RELOADED = "reloaded"  # dynamic batching, latest version only; uploads during the soak


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory, mlp_bytes, token_file):
    base = tmp_path_factory.mktemp("soak")
    repo = base / "repo"
    add_onnx_model(repo, "mlp", mlp_bytes)
    add_onnx_model(
        repo,
        RELOADED,
        mlp_bytes,
        config={
            "dynamic_batching": {"max_queue_delay_microseconds": 2000},
            "version_policy": {"latest": {"num_versions": 1}},
        },
    )
    srv = Server(repo, base / "serve.log", "--token-file", str(token_file))
    yield srv
    srv.stop()
    shutil.rmtree(repo, ignore_errors=True)


class Load:
    """What the clients saw: latencies of answered requests, failures with their reason."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.binary = self.json = 0

    def add(self, latency: float, binary: bool) -> None:
        with self.lock:
            self.latencies.append(latency)
            self.binary += binary
            self.json += not binary

    def fail(self, reason: str) -> None:
        with self.lock:
            self.failures.append(reason)


def _client_loop(server, worker: int, stop: threading.Event, load: Load, answers) -> None:
    rng = np.random.default_rng(worker)
    inputs = [make_inputs(int(rows), seed=worker * 10 + i) for i, rows in enumerate([1, 3, 8])]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        i = 0
        while not stop.is_set():
            i += 1
            case = inputs[i % len(inputs)]
            model = RELOADED if i % 2 else "mlp"
            binary = bool(rng.integers(2))
            body, length = encode_infer_request(case, binary=binary)
            headers = {} if length is None else {"Inference-Header-Content-Length": str(length)}
            started = time.perf_counter()
            try:
                response = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
                latency = time.perf_counter() - started
                if response.status_code != 200:
                    load.fail(f"{model}: {response.status_code} {response.text[:200]}")
                    continue
                score = decode_infer_response(
                    response.content, response.headers.get("inference-header-content-length")
                )["score"]
            except Exception as err:  # a transport error is a failed request too
                load.fail(f"{model}: {err!r}")
                continue
            expected = answers[model](case)
            if not any(np.allclose(score, e, rtol=1e-5, atol=1e-6) for e in expected):
                load.fail(f"{model}: wrong answer")
                continue
            load.add(latency, binary)


def _upload_loop(server, stop: threading.Event, models: list[bytes], uploads: list) -> None:
    with Client(server.url, token=TOKEN) as client:
        k = 0
        while not stop.wait(UPLOAD_EVERY_S):
            k += 1
            try:
                uploads.append(client.upload(RELOADED, models[k % 2]))
            except Exception as err:
                uploads.append(repr(err))


def _rss_loop(pid: int, stop: threading.Event, samples: list[int]) -> None:
    while not stop.wait(RSS_EVERY_S):
        samples.append(rss_bytes(pid))


def test_soak_mixed_load_with_reloads(soak_server, mlp_bytes, mlp2_bytes, results):
    sessions = [
        ort.InferenceSession(m, providers=["CPUExecutionProvider"]) for m in (mlp_bytes, mlp2_bytes)
    ]

    def outputs(session):
        return lambda case: session.run(None, case)[0]

    first, second = (outputs(s) for s in sessions)
    answers = {
        "mlp": lambda case: [first(case)],
        RELOADED: lambda case: [first(case), second(case)],  # either version, never anything else
    }
    load, uploads, rss = Load(), [], [rss_bytes(soak_server.process.pid)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client_loop, args=(soak_server, w, stop, load, answers))
        for w in range(CLIENTS)
    ]
    threads.append(
        threading.Thread(
            target=_upload_loop, args=(soak_server, stop, [mlp_bytes, mlp2_bytes], uploads)
        )
    )
    threads.append(threading.Thread(target=_rss_loop, args=(soak_server.process.pid, stop, rss)))
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        time.sleep(SOAK_SECONDS)
        while time.perf_counter() - begin < SOAK_LIMIT and (
            len(load.latencies) + len(load.failures) <= MIN_REQUESTS
            or sum(isinstance(u, int) for u in uploads) < MIN_UPLOADS
        ):
            time.sleep(0.2)
    finally:
        stop.set()
        elapsed = time.perf_counter() - begin
        for thread in threads:
            thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a client hung"

    requests = len(load.latencies) + len(load.failures)
    latencies = np.asarray(load.latencies) * 1000
    third = max(1, len(rss) // 3)
    rss_first, rss_last = np.median(rss[:third]), np.median(rss[-third:])
    record = dict(
        kind="load",
        what="soak: mixed JSON/binary infer, uploads of new versions during it",
        clients=CLIENTS,
        seconds=round(elapsed, 1),
        requests=requests,
        binary=load.binary,
        json=load.json,
        failures=len(load.failures),
        requests_per_s=round(requests / elapsed, 1),
        p50_ms=round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
        p99_ms=round(float(np.percentile(latencies, 99)), 2) if len(latencies) else None,
        uploads=len([u for u in uploads if isinstance(u, int)]),
        upload_failures=len([u for u in uploads if not isinstance(u, int)]),
        rss_samples=len(rss),
        rss_start_mb=round(rss_first / 2**20, 1),
        rss_end_mb=round(rss_last / 2**20, 1),
        rss_max_mb=round(max(rss) / 2**20, 1),
        rss_criterion="median of the last third of the samples is within 10% + 20 MB of the "
        "median of the first third",
    )
    results.update(record)
    assert load.failures == [], load.failures[:10]
    assert all(isinstance(u, int) for u in uploads), uploads
    assert record["uploads"] >= MIN_UPLOADS, record
    assert requests > MIN_REQUESTS, record  # the load was real
    assert rss_last <= rss_first * 1.10 + 20 * 2**20, record
    # After the last upload returned, the batched model answers with that version.
    with Client(soak_server.url) as client:
        case = make_inputs(2, seed=99)
        served = client.model_metadata(RELOADED)["versions"]
        assert served == [str(uploads[-1])]
        score = client.infer(RELOADED, case)["score"]
        # Version 1 is the first model; upload k (version k + 1) alternates second, first, ...
        expected = (second if uploads[-1] % 2 == 0 else first)(case)
        np.testing.assert_allclose(score, expected, rtol=1e-5, atol=1e-6)
    assert soak_server.alive()


def test_a_request_holding_a_version_retired_by_a_reload_still_gets_its_answer(
    tmp_path, mlp_bytes, mlp2_bytes
):
    """The race the soak found: a request resolved the old version, a reload retired it (and
    closed its batcher) before the request was queued; it was answered 503."""
    import asyncio

    from rootml.serve.models import ModelManager

    add_onnx_model(
        tmp_path,
        RELOADED,
        mlp_bytes,
        config={"dynamic_batching": {}, "version_policy": {"latest": {"num_versions": 1}}},
    )
    case = make_inputs(3, seed=5)

    async def main():
        manager = ModelManager(tmp_path)
        await manager.load_all()
        old = manager.get(RELOADED)
        add_onnx_model(tmp_path, RELOADED, mlp2_bytes)
        await manager.load(RELOADED)
        assert manager.get(RELOADED) is not old and old.batcher.closed
        try:
            return await manager.infer(old, case)
        finally:
            await manager.close()

    expected = ort.InferenceSession(mlp_bytes, providers=["CPUExecutionProvider"]).run(None, case)
    np.testing.assert_array_equal(asyncio.run(main())["score"], expected[0])
