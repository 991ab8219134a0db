"""TensorBatch: one buffer out of DataLoader workers, a plain dict everywhere else."""

from __future__ import annotations

import copy
import io
import pickle
from collections import OrderedDict

import torch

from rootml.datasets import _transport as transport
from rootml.datasets._transport import TensorBatch


def _batch(start: int) -> TensorBatch:
    return TensorBatch(
        features=torch.arange(start, start + 12, dtype=torch.float32).reshape(4, 3),
        mask=torch.tensor([[True, False, True]] * 4),
        label=torch.arange(4, dtype=torch.int64),
        weight=torch.full((4,), 0.5),
        ids=torch.arange(8, dtype=torch.int64).reshape(4, 2) * 3,
        empty=torch.zeros((0, 3)),
        half=torch.arange(start, start + 4, dtype=torch.bfloat16),
        scalar=torch.tensor(float(start)),
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


def test_worker_payload_goes_through_the_ring_or_one_buffer(monkeypatch):
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    monkeypatch.setattr(transport, "_ring", None)
    if transport._RING:
        messages = [pickle.dumps(_batch(i)) for i in range(transport._SLOTS + 2)]
        ring = transport._ring
        assert ring is not None and (ring.raw[: transport._SLOTS] == 1).all()
        # every slot taken: the two last batches went as bytes
        assert [transport._rebuild_from_ring.__name__.encode() in m for m in messages] == [
            True
        ] * transport._SLOTS + [False, False]
        backs = [pickle.loads(message) for message in messages]
        for i, back in enumerate(backs):
            assert all(torch.equal(back[k], v) for k, v in _batch(i).items())
        # The received tensors are views of their slots: a slot is free once they are gone.
        assert (ring.raw[: transport._SLOTS] == 1).all() and ring.raw[transport._SLOTS] == 1
        kept = backs[3]["features"][1:]
        del back, backs
        assert (ring.raw[: transport._SLOTS] == 0).sum() == transport._SLOTS - 1
        assert ring.raw[3] == 1 and torch.equal(kept, _batch(3)["features"][1:])
        del kept
        assert (ring.raw[: transport._SLOTS] == 0).all()
        # mapped by the receiver: later messages carry the ring's key, no descriptor
        assert ring.handle()[2] is None
    monkeypatch.setattr(transport, "_RING", False)
    rebuild, (buffer, layout) = _batch(0).__reduce__()
    assert rebuild is transport._rebuild and isinstance(buffer, bytearray)
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
