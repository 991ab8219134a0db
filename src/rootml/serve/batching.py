"""Dynamic batching: concurrent requests of one model version coalesced into one onnxruntime run.

A request waits at most `max_delay_s` after it was queued for others to join it; a batch is sent
as soon as it holds `max_batch_size` rows (or the largest of Triton's `preferred_batch_size`) or the
delay of its first request is over. While every run slot is busy, requests keep queuing, so batches
grow with load. The queue is bounded: a request that finds it full is refused (Overloaded).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from rootml.errors import ModelError, ModelNotReady, Overloaded

log = logging.getLogger(__name__)

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
ObserveFn = Callable[[int, list[float]], None]
# (rows, queue times, run s, gather s, split s) of a run that succeeded.
ExecutedFn = Callable[[int, list[float], float, float, float], None]


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    signature: tuple
    queued_at: float
    future: asyncio.Future = field(repr=False)


def _signature(feeds: dict[str, np.ndarray]) -> tuple:
    # Requests can share a run only when all their non-batch dims agree.
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(feeds.items()))


class DynamicBatcher:
    """Queue of requests for one model version, run in batches on `executor`.

    `run` maps input arrays (B, ...) to output arrays (B, ...) and is called in the executor;
    `observe(rows, queue_times)` is told about every run as it starts, `executed(rows,
    queue_times, run_s, gather_s, split_s)` about every run that succeeded, with the seconds it
    took to run, to gather its inputs and to split its outputs. At most `slots` runs are in flight.
    A batch is sent once it holds the largest of `preferred_batch_size` rows, if given.
    Raises ModelError for max_batch_size < 1 or preferred sizes outside 1..max_batch_size.
    """

    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        slots: int = 1,
        observe: ObserveFn | None = None,
        preferred_batch_size: Sequence[int] = (),
        executed: ExecutedFn | None = None,
    ):
        if max_batch_size < 1:
            raise ModelError("dynamic batching needs max_batch_size > 0 in config.pbtxt")
        if not all(isinstance(n, int) and 0 < n <= max_batch_size for n in preferred_batch_size):
            raise ModelError(
                f"preferred_batch_size {list(preferred_batch_size)} must be sizes from 1 to "
                f"max_batch_size {max_batch_size}"
            )
        # A batch that reaches this many rows goes without waiting for more: with a cheap HTTP
        # front and a dear model, a smaller batch started now overlaps the next one's requests.
        self._target = max(preferred_batch_size, default=max_batch_size)
        self._run_fn, self._executor = run, executor
        self.max_batch_size, self.max_delay_s, self.max_queue = (
            max_batch_size,
            max_delay_s,
            max_queue,
        )
        self._observe, self._executed = observe, executed
        self._items: collections.deque[_Pending] = collections.deque()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(slots)
        self._closed = False
        self._runs: set[asyncio.Task] = set()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    @property
    def closed(self) -> bool:
        """Whether close() was called: the batcher takes no more requests."""
        return self._closed

    def submit(self, feeds: dict[str, np.ndarray]) -> asyncio.Future:
        """Queue one request (inputs with the batch as first dim); the future gets its outputs.

        Raises Overloaded when the queue is full, ModelNotReady when the batcher is closed.
        """
        if self._closed:
            raise ModelNotReady("model version is being unloaded")
        if len(self._items) >= self.max_queue:
            raise Overloaded(f"queue full ({self.max_queue} requests waiting); retry later")
        future = asyncio.get_running_loop().create_future()
        rows = next(iter(feeds.values())).shape[0]
        self._items.append(_Pending(feeds, rows, _signature(feeds), time.perf_counter(), future))
        self._wake.set()
        return future

    async def close(self) -> None:
        """Stop taking requests, finish the queued ones and the runs in flight."""
        self._closed = True
        self._wake.set()
        await self._task
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)

    async def _wait(self, timeout: float | None) -> bool:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _loop(self) -> None:
        while True:
            while not self._items:
                if self._closed:
                    return
                await self._wait(None)
            await self._slots.acquire()
            batch = self._collect_first()
            if not batch:
                self._slots.release()
                continue
            deadline = batch[0].queued_at + self.max_delay_s
            rows = sum(p.rows for p in batch)
            while rows < self._target:
                if not self._items:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0 or self._closed or not await self._wait(remaining):
                        break
                    continue
                item = self._items[0]
                if rows + item.rows > self.max_batch_size or item.signature != batch[0].signature:
                    break
                batch.append(self._items.popleft())
                rows += item.rows
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    def _collect_first(self) -> list[_Pending]:
        # Requests whose client gave up (deadline) are dropped instead of run.
        while self._items and self._items[0].future.done():
            self._items.popleft()
        return [self._items.popleft()] if self._items else []

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                return
            rows = sum(p.rows for p in batch)
            names = list(batch[0].feeds)
            gathering = time.perf_counter()
            feeds = (
                batch[0].feeds
                if len(batch) == 1
                else {n: np.concatenate([p.feeds[n] for p in batch]) for n in names}
            )
            started = time.perf_counter()
            waits = [started - p.queued_at for p in batch]
            if self._observe is not None:
                self._observe(rows, waits)
            loop = asyncio.get_running_loop()
            try:
                outputs, run_s = await loop.run_in_executor(self._executor, self._timed_run, feeds)
                for name, array in outputs.items():
                    if array.ndim == 0 or array.shape[0] != rows:
                        raise ModelError(
                            f"output {name!r} of shape {list(array.shape)} has no batch dim of {rows}"
                        )
            except Exception as err:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                return
            splitting = time.perf_counter()
            offset = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(
                        {n: a[offset : offset + p.rows] for n, a in outputs.items()}
                    )
                offset += p.rows
            if self._executed is not None:
                split_s = time.perf_counter() - splitting
                self._executed(rows, waits, run_s, started - gathering, split_s)
        finally:
            self._slots.release()

    def _timed_run(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        # In the run thread: the run's own duration, without the wait for the event loop after.
        started = time.perf_counter()
        outputs = self._run_fn(feeds)
        return outputs, time.perf_counter() - started
