"""Dynamic batching: alone with a counting run function, and live with 32 concurrent clients."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from rootml.errors import ModelError, ProtocolError
from rootml.serve.batching import DynamicBatcher
from tests.serve.conftest import make_inputs


class CountingRun:
    """Doubles its input; records the batch sizes it was called with."""

    def __init__(self, delay_s: float = 0.0):
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, feeds):
        time.sleep(self.delay_s)
        with self.lock:
            self.sizes.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2, "z": feeds["x"].sum(axis=1, keepdims=True)}


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_runs_and_get_their_own_rows():
    run = CountingRun()
    rows = [1, 3, 2, 5, 1, 4, 2, 2]
    arrays = [
        np.arange(r * 3, dtype=np.float32).reshape(r, 3) + 100 * i for i, r in enumerate(rows)
    ]

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(run, pool, max_batch_size=8, max_delay_s=0.05, max_queue=100)
            futures = [batcher.submit({"x": a}) for a in arrays]
            results = await asyncio.gather(*futures)
            await batcher.close()
        return results

    results = _run(main())
    for array, result in zip(arrays, results):
        np.testing.assert_array_equal(result["y"], array * 2)
        np.testing.assert_array_equal(result["z"], array.sum(axis=1, keepdims=True))
    assert sum(run.sizes) == sum(rows)
    assert max(run.sizes) <= 8 and len(run.sizes) < len(rows)


def test_different_trailing_shapes_are_not_mixed():
    run = CountingRun()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(run, pool, max_batch_size=64, max_delay_s=0.02, max_queue=100)
            a = batcher.submit({"x": np.ones((2, 3), np.float32)})
            b = batcher.submit({"x": np.ones((2, 4), np.float32)})
            results = await asyncio.gather(a, b)
            await batcher.close()
        return results

    first, second = _run(main())
    assert first["y"].shape == (2, 3) and second["y"].shape == (2, 4)
    assert sorted(run.sizes) == [2, 2]


def test_preferred_batch_size_sends_a_batch_without_waiting_for_more():
    """Ten single-row requests at once: batches of the preferred 4 rows, the rest when it is
    their turn; without a preferred size, one batch of ten."""
    arrays = [np.full((1, 3), i, np.float32) for i in range(10)]

    async def main(preferred):
        run = CountingRun(delay_s=0.02)
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(
                run, pool, 64, max_delay_s=0.05, max_queue=100, preferred_batch_size=preferred
            )
            results = await asyncio.gather(*[batcher.submit({"x": a}) for a in arrays])
            await batcher.close()
        for array, result in zip(arrays, results):
            np.testing.assert_array_equal(result["y"], array * 2)
        return run.sizes

    assert _run(main([2, 4])) == [4, 4, 2]
    assert _run(main([])) == [10]
    with pytest.raises(ModelError, match="preferred_batch_size"):
        _run(main([128]))


def test_queue_overflow_is_503_and_close_drains():
    run = CountingRun(delay_s=0.05)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(run, pool, max_batch_size=2, max_delay_s=0.0, max_queue=3)
            futures = [batcher.submit({"x": np.ones((1, 2), np.float32)}) for _ in range(3)]
            with pytest.raises(ProtocolError) as err:
                batcher.submit({"x": np.ones((1, 2), np.float32)})
            assert err.value.status == 503
            await batcher.close()
            assert all(f.done() and not f.exception() for f in futures)
            with pytest.raises(ProtocolError):
                batcher.submit({"x": np.ones((1, 2), np.float32)})

    _run(main())
    assert sum(run.sizes) == 3


def test_run_failure_reaches_every_request():
    def failing(feeds):
        raise RuntimeError("boom")

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(
                failing, pool, max_batch_size=4, max_delay_s=0.01, max_queue=10
            )
            futures = [batcher.submit({"x": np.ones((1, 2), np.float32)}) for _ in range(3)]
            results = await asyncio.gather(*futures, return_exceptions=True)
            await batcher.close()
        return results

    assert all(isinstance(r, RuntimeError) for r in _run(main()))


def _runs(server, model: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(
        rf'rootml_session_runs_total{{model="{model}",version="1"}} ([0-9.e+]+)', text
    )
    return float(match.group(1)) if match else 0.0


def _infer_one(address: str, inputs: dict[str, np.ndarray], model: str) -> np.ndarray:
    client = triton.InferenceServerClient(address)
    try:
        tensors = []
        for name, datatype in (("features", "FP32"), ("mask", "BOOL")):
            tensor = triton.InferInput(name, list(inputs[name].shape), datatype)
            tensor.set_data_from_numpy(inputs[name])
            tensors.append(tensor)
        return client.infer(model, tensors).as_numpy("score")
    finally:
        client.close()


@pytest.mark.parametrize("model", ["mlp_batched", "fixed"])
def test_32_concurrent_clients(server, mlp_bytes, model):
    """Same results as onnxruntime alone; the batched model needs fewer runs than requests."""
    session = ort.InferenceSession(mlp_bytes, providers=["CPUExecutionProvider"])
    requests = [make_inputs(1 + i % 3, seed=100 + i) for i in range(32)]
    before = _runs(server, model)
    barrier = threading.Barrier(32)

    def one(inputs):
        barrier.wait(timeout=10)
        return _infer_one(server.address, inputs, model)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, requests))
    for inputs, result in zip(requests, results):
        np.testing.assert_allclose(result, session.run(None, inputs)[0], rtol=1e-6, atol=1e-7)
    runs = _runs(server, model) - before
    if model == "fixed":
        assert runs == 32
    else:
        assert 1 <= runs < 32
