"""Batches crossing from DataLoader workers to the training process as one buffer each.

torch sends every tensor a worker yields through its own new shared-memory segment, whose file
descriptor goes over a Unix socket and whose pages fault in on both sides: for the six small
tensors of a 1024-row batch that costs ~3 ms of CPU, more than reading the rows from the file.
A `TensorBatch` leaving a worker pickles instead as one bytes buffer holding all its tensors
(~1 ms through the worker's pipe); the training process rebuilds the tensors as views of it.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch

_ALIGN = 64  # each tensor starts on a cache line, so every dtype view is aligned


class TensorBatch(dict):
    """A dict of CPU tensors (one batch) that pickles compactly inside a DataLoader worker.

    Everywhere else it is a plain dict: copies are shallow dict copies, and pickling it outside a
    worker (torch.save, your own multiprocessing) stores an OrderedDict of the tensors, which
    `torch.load(weights_only=True)` accepts.
    """

    def __copy__(self) -> TensorBatch:
        return TensorBatch(self)

    def __deepcopy__(self, memo: dict) -> TensorBatch:
        return TensorBatch({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def __reduce__(self) -> tuple:
        if torch.utils.data.get_worker_info() is None or not all(
            isinstance(v, torch.Tensor) and v.device.type == "cpu" and not v.requires_grad
            for v in self.values()
        ):
            return (OrderedDict, (list(self.items()),))
        layout, size = [], 0
        for key, tensor in self.items():
            nbytes = tensor.numel() * tensor.element_size()
            layout.append(
                (key, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), size)
            )
            size += -(-nbytes // _ALIGN) * _ALIGN
        buffer = bytearray(size)
        raw = np.frombuffer(buffer, dtype=np.uint8)
        for (_, _, _, offset), tensor in zip(layout, self.values()):
            data = tensor.contiguous().numpy().reshape(-1).view(np.uint8)
            raw[offset : offset + data.size] = data
        return (_rebuild, (buffer, layout))


def _rebuild(buffer: bytearray, layout: list[tuple[str, str, tuple[int, ...], int]]) -> TensorBatch:
    raw = (
        torch.frombuffer(buffer, dtype=torch.uint8)
        if len(buffer)
        else torch.empty(0, dtype=torch.uint8)
    )
    batch = TensorBatch()
    for key, dtype_name, shape, offset in layout:
        dtype = getattr(torch, dtype_name)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * torch.empty(0, dtype=dtype).element_size()
        batch[key] = raw[offset : offset + nbytes].view(dtype).view(shape)
    return batch
