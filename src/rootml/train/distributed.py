"""Devices and torch.distributed for training: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch

from rootml._runtime import distributed, rank_world
from rootml.errors import ConfigError


def resolve_device(device: str | None = "auto") -> torch.device:
    """ "auto" (or None) -> cuda when available, else cpu; "cuda" under torchrun -> the local
    rank's GPU (cuda:LOCAL_RANK); "cpu", "cuda:N" as given. Raises ConfigError (a ValueError)
    for an unknown device and when CUDA is asked for and not available."""
    device = device or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    try:
        target = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device {device!r}: give auto, cpu, cuda or cuda:N") from err
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this torch has no CUDA device")
    return target


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Start torch.distributed when launched by torchrun (WORLD_SIZE > 1) and not started yet:
    nccl on GPU (after selecting the rank's GPU), gloo on CPU. Returns (rank, world_size);
    (0, 1) without torchrun."""
    dist = torch.distributed
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank_world()


def gather_arrays(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Every rank's `arrays`, in rank order (collective: every rank must call it)."""
    dist = torch.distributed
    if not distributed():
        return [arrays]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, arrays)
    return gathered


def sync_after_join(optimizer: torch.optim.Optimizer, scaler: Any, steps: int) -> None:
    """After a training pass under DDP's Join, give every rank the optimiser and AMP scaler state
    of the rank that took the most steps (collective: every rank must call it, with its own
    number of steps this epoch).

    A rank that runs out of batches shadows the others' gradient all-reduces without stepping its
    optimiser, and DDP then copies the parameters of the last rank to join (the highest rank
    among those with the most steps) to all ranks, but not the optimiser state: Adam's moments
    and step count would otherwise differ between ranks, so would the next epoch's updates, and
    rank 0's checkpoint would not be the state the other ranks continue from. The state travels
    through torch.save to CPU, so ranks on nodes with other GPU numbering can read it."""
    dist = torch.distributed
    if not distributed() or dist.get_world_size() == 1:
        return
    counts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(counts, steps)
    most = max(counts)
    if min(counts) == most:  # an even epoch: every rank took every step
        return
    source = max(rank for rank, count in enumerate(counts) if count == most)
    payload: list[Any] = [None]
    if dist.get_rank() == source:
        buffer = io.BytesIO()
        torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}, buffer)
        payload = [buffer.getvalue()]
    dist.broadcast_object_list(payload, src=source)
    if dist.get_rank() != source:
        state = torch.load(io.BytesIO(payload[0]), map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
