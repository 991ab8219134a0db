"""Devices and torch.distributed for training: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

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
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def world() -> tuple[int, int]:
    """(rank, world_size) of the running process group, (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_arrays(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Every rank's `arrays`, in rank order (collective: every rank must call it)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return [arrays]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, arrays)
    return gathered
