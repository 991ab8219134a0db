"""Batches crossing from DataLoader workers to the training process as one buffer each.

torch sends every tensor a worker yields through its own new shared-memory segment, whose file
descriptor goes over a Unix socket and whose pages fault in on both sides: for the six small
tensors of a 1024-row batch that costs ~3 ms of CPU, more than reading the rows from the file.
A `TensorBatch` leaving a worker is written instead into a slot of a ring of shared memory that
the worker maps once (its descriptor crosses once); the message through the worker's pipe only
names the slot. The training process's tensors are views of the slot, which is freed when the
last of them is gone (a copy out of it cost ~0.25 CPU s per 1M events of 131 features). When no
slot is free (batches kept by the caller hold theirs), or off Linux x86-64, the batch goes as one
pickled bytes buffer (~1 ms).
"""

from __future__ import annotations

import copy
import math
import mmap
import os
import platform
import threading
import weakref
from collections import OrderedDict
from multiprocessing.reduction import DupFd

import numpy as np
import torch

_ALIGN = 64  # each tensor starts on a cache line, so every dtype view is aligned
_SLOTS = 16  # batches a worker may have in flight through its ring
_PAGE = mmap.PAGESIZE
# Freeing a slot is a plain store after the copy-out loads: ordered on x86-64 (TSO), not
# everywhere, so other machines use the pipe.
_RING = hasattr(os, "memfd_create") and platform.machine().lower() in ("x86_64", "amd64")


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
        layout, size = _layout(self)
        ring = _worker_ring(size) if _RING else None
        slot = ring.claim() if ring is not None and size <= ring.slot_size else None
        if slot is not None:
            _fill(ring.slot(slot, size), layout, self.values())
            return (_rebuild_from_ring, (ring.handle(), slot, size, layout))
        buffer = bytearray(size)
        _fill(np.frombuffer(buffer, dtype=np.uint8), layout, self.values())
        return (_rebuild, (buffer, layout))


def _layout(batch: dict) -> tuple[list[tuple[str, str, tuple[int, ...], int]], int]:
    layout, size = [], 0
    for key, tensor in batch.items():
        nbytes = tensor.numel() * tensor.element_size()
        layout.append((key, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), size))
        size += -(-nbytes // _ALIGN) * _ALIGN
    return layout, size


def _fill(raw: np.ndarray, layout: list, tensors) -> None:
    for (_, _, _, offset), tensor in zip(layout, tensors):
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()  # any dtype, as bytes
        raw[offset : offset + data.size] = data


class _Ring:
    """A worker's shared memory: a page of slot states (0 free, 1 sent; byte _SLOTS is set by
    the receiver once it has mapped the ring), then _SLOTS slots of `slot_size` bytes."""

    def __init__(self, slot_size: int):
        self.pid, self.slot_size = os.getpid(), -(-slot_size // _PAGE) * _PAGE
        self.fd = os.memfd_create("rootml-batches", os.MFD_CLOEXEC)
        size = _PAGE + _SLOTS * self.slot_size
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self.raw = np.frombuffer(self.map, dtype=np.uint8)
        self.key = f"{self.pid}-{id(self)}"

    def claim(self) -> int | None:
        free = np.flatnonzero(self.raw[:_SLOTS] == 0)
        if not len(free):
            return None
        self.raw[free[0]] = 1
        return int(free[0])

    def slot(self, index: int, size: int) -> np.ndarray:
        start = _PAGE + index * self.slot_size
        return self.raw[start : start + size]

    def handle(self) -> tuple:
        # The descriptor travels (over a socket, once per message) until the receiver has mapped
        # the ring; after that only its key does.
        mapped = self.raw[_SLOTS] == 1
        return (self.key, self.pid, None if mapped else DupFd(self.fd), self.slot_size)


_ring: _Ring | None = None


def _worker_ring(size: int) -> _Ring | None:
    global _ring
    if _ring is None or _ring.pid != os.getpid():
        try:
            # Room for the largest batch seen first plus a quarter: batches have one size
            # but the last; a larger one goes through the pipe.
            _ring = _Ring(size + size // 4)
        except OSError:
            return None
    return _ring


_attached: dict[str, tuple[int, mmap.mmap, np.ndarray]] = {}
_attached_lock = threading.Lock()


def _rebuild_from_ring(handle: tuple, slot: int, size: int, layout: list) -> TensorBatch:
    key, pid, fd_handle, slot_size = handle
    with _attached_lock:
        fd = fd_handle.detach() if fd_handle is not None else None
        if key not in _attached:
            if fd is None:
                raise RuntimeError(f"batch from worker {pid} names a ring that was never mapped")
            _forget_dead_workers()
            ring_map = mmap.mmap(fd, _PAGE + _SLOTS * slot_size)
            _attached[key] = (pid, ring_map, np.frombuffer(ring_map, dtype=np.uint8))
        if fd is not None:
            os.close(fd)
        raw = _attached[key][2]
    raw[_SLOTS] = 1
    start = _PAGE + slot * slot_size
    view = raw[start : start + size]
    # The tensors hold `view` (torch keeps the array it was made from): when the last of them is
    # gone, the slot goes back to the worker. Its reads are done by then (x86-64 keeps stores
    # after earlier loads).
    weakref.finalize(view, _free_slot, raw, slot)
    return _rebuild(view, layout)


def _free_slot(raw: np.ndarray, slot: int) -> None:
    raw[slot] = 0


def _forget_dead_workers() -> None:
    # Unmapped when the last view goes (tensors hold copies, never views of a ring).
    for key, (pid, _, _) in list(_attached.items()):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            del _attached[key]
        except PermissionError:
            pass


def _rebuild(
    buffer: bytearray | np.ndarray, layout: list[tuple[str, str, tuple[int, ...], int]]
) -> TensorBatch:
    if isinstance(buffer, np.ndarray):
        raw = torch.from_numpy(buffer)
    elif len(buffer):
        raw = torch.frombuffer(buffer, dtype=torch.uint8)
    else:
        raw = torch.empty(0, dtype=torch.uint8)
    batch = TensorBatch()
    for key, dtype_name, shape, offset in layout:
        dtype = getattr(torch, dtype_name)
        count = math.prod(shape)
        nbytes = count * torch.empty(0, dtype=dtype).element_size()
        batch[key] = raw[offset : offset + nbytes].view(dtype).view(shape)
    return batch
