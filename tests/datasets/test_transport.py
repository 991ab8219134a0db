"""TensorBatch: one buffer out of DataLoader workers, a plain dict everywhere else."""

from __future__ import annotations

import copy
import io
import pickle
from collections import OrderedDict

import torch

from rootml.datasets._transport import TensorBatch, _rebuild


def _batch(start: int) -> TensorBatch:
    return TensorBatch(
        features=torch.arange(start, start + 12, dtype=torch.float32).reshape(4, 3),
        mask=torch.tensor([[True, False, True]] * 4),
        label=torch.arange(4, dtype=torch.int64),
        weight=torch.full((4,), 0.5),
        ids=torch.arange(8, dtype=torch.int64).reshape(4, 2) * 3,
        empty=torch.zeros((0, 3)),
    )


class _Batches(torch.utils.data.IterableDataset):
    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        for i in range(info.id, 6, info.num_workers):
            yield _batch(100 * i)


def test_batches_from_workers_equal_what_the_workers_made():
    got = list(torch.utils.data.DataLoader(_Batches(), batch_size=None, num_workers=2))
    assert len(got) == 6
    for batch in got:
        assert isinstance(batch, TensorBatch)
        want = _batch(int(batch["features"][0, 0]))
        assert list(batch) == list(want)
        for key, tensor in want.items():
            assert batch[key].dtype == tensor.dtype and batch[key].shape == tensor.shape
            assert torch.equal(batch[key], tensor)
        batch["features"] += 1  # writable


def test_worker_payload_is_one_buffer(monkeypatch):
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    rebuild, (buffer, layout) = _batch(0).__reduce__()
    assert rebuild is _rebuild and isinstance(buffer, bytearray)
    assert [entry[0] for entry in layout] == list(_batch(0))
    back = pickle.loads(pickle.dumps(_batch(7)))
    assert all(torch.equal(back[k], v) for k, v in _batch(7).items())


def test_outside_workers_it_is_a_plain_mapping():
    batch = _batch(0)
    assert type(copy.copy(batch)) is TensorBatch and copy.copy(batch)["label"] is batch["label"]
    deep = copy.deepcopy(batch)
    assert deep["label"] is not batch["label"] and torch.equal(deep["label"], batch["label"])
    assert type(pickle.loads(pickle.dumps(batch))) is OrderedDict
    saved = io.BytesIO()
    torch.save(batch, saved)
    saved.seek(0)
    loaded = torch.load(saved)  # weights_only=True by default
    assert all(torch.equal(loaded[k], v) for k, v in batch.items())
