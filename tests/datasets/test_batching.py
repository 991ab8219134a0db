"""The Batcher against a plain reference: concatenate the waiting rows, permute them all, cut."""

from __future__ import annotations

import numpy as np
import pytest

from rootml.datasets._batching import Batcher


def _reference(blocks, batch_size, buffer, seed, drop_last):
    """Shuffle buffer done the obvious way (every cut permutes every waiting row)."""
    rng = np.random.default_rng(seed) if seed is not None else None
    buffer = buffer if rng else 0
    waiting = np.zeros(0, dtype=np.int64)
    out = []

    def cut(keep):
        nonlocal waiting
        count = max(len(waiting) - keep, 0) // batch_size
        if count and rng is not None:
            waiting = waiting[rng.permutation(len(waiting))]
        out.extend(np.split(waiting[: count * batch_size], count) if count else [])
        waiting = waiting[count * batch_size :]

    for block in blocks:
        if len(block):
            waiting = np.concatenate([waiting, block])
            cut(buffer)
    cut(0)
    if len(waiting) and not drop_last:
        out.append(waiting)
    return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_equal_the_reference(shuffle):
    rng = np.random.default_rng(11)
    for trial in range(300):
        batch_size = int(rng.integers(1, 40))
        buffer = int(rng.integers(0, 150))
        sizes = rng.integers(0, 120, rng.integers(1, 9))
        drop_last = bool(rng.integers(0, 2))
        starts = np.concatenate([[0], np.cumsum(sizes)])
        blocks = [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])]
        seed = trial if shuffle else None
        batcher = Batcher(batch_size, buffer, np.random.default_rng(seed) if shuffle else None)
        got = []
        for block in blocks:
            # more columns check that rows stay whole (rows of any width and dtype, even none)
            columns = {
                "entry": block,
                "twice": np.stack([2 * block] * 3, 1),
                "odd": np.stack([block % 2 == 1] * 5, 1),
                "half": (block / 2).astype(np.float32)[:, None, None],
                "none": np.zeros((len(block), 0), dtype=np.float32),
            }
            for batch in batcher.add(columns):
                assert np.array_equal(batch["twice"], np.stack([2 * batch["entry"]] * 3, 1))
                assert np.array_equal(batch["odd"], np.stack([batch["entry"] % 2 == 1] * 5, 1))
                assert np.array_equal(batch["half"][:, 0, 0], batch["entry"] / 2)
                assert batch["none"].shape == (len(batch["entry"]), 0)
                got.append(batch["entry"].copy())
        got += [b["entry"].copy() for b in batcher.finish(drop_last)]
        want = _reference(blocks, batch_size, buffer, seed, drop_last)
        assert len(got) == len(want), (trial, batch_size, buffer, sizes)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        assert batcher.waiting == 0


def test_waiting_rows_are_bounded_and_counted():
    batcher = Batcher(100, 1000, np.random.default_rng(0))
    emitted = 0
    for i in range(30):
        block = {"entry": np.arange(i * 700, (i + 1) * 700)}
        emitted += sum(len(b["entry"]) for b in batcher.add(block))
        assert batcher.waiting == (i + 1) * 700 - emitted
        assert batcher.waiting <= 1000 + 100
