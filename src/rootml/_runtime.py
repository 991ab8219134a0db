"""Facts about the running process that every layer asks for: the cores it may use, and its
rank in a torch.distributed process group. torch is imported only when asked about ranks."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a Slurm or container limit),
    else the machine's, at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def distributed() -> bool:
    """Whether this process is in a running torch.distributed process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world_size) of the running process group, (0, 1) without one."""
    if not distributed():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()
