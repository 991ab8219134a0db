"""Argument checks of the dataset and the statistics pass, one named helper per kind of value.

Each returns the value in its working type or raises ConfigError naming the argument and the
value, at construction: an argument that cannot work is refused before any file is read (a
`chunk_size` of 0 would otherwise plan work units forever). `bool` is not a number here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from rootml.errors import ConfigError


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 1e5 from a JSON file or a command line
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """An int >= 1 (sizes: chunk_size, batch_size, prefetch, workers)."""
    number = _integer(name, value)
    if number < 1:
        raise ConfigError(f"{name} must be at least 1, not {value!r}")
    return number


def non_negative_int(name: str, value: Any) -> int:
    """An int >= 0 (counts: retries, seed)."""
    number = _integer(name, value)
    if number < 0:
        raise ConfigError(f"{name} must be 0 or more, not {value!r}")
    return number


def real(name: str, value: Any, minimum: float | None = None) -> float:
    """A finite number (at least `minimum` when given)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, not {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value!r}")
    return number


def one_of(name: str, value: Any, options: Sequence[Any]) -> Any:
    if value not in options:
        raise ConfigError(f"{name} must be one of {list(options)}, not {value!r}")
    return value


def nevts(value: Any) -> Any:
    """None or -1 (every entry), a positive total, or per file a list/dict of those."""
    if value is None or isinstance(value, (str, dict, list, tuple)):
        return value  # per file: each value is checked when the files are matched
    number = _integer("nevts", value)
    return None if number == -1 else positive_int("nevts", number)


def file_nevts(value: Any) -> int | None:
    """One file's nevts: None or -1 (all its entries) or a count >= 0."""
    if value is None:
        return None
    number = _integer("nevts", value)
    return None if number == -1 else non_negative_int("nevts", number)


def label(value: Any) -> int:
    """A per-file label: an integer class (an integral float such as 1.0 is accepted)."""
    value = _from_text("labels", value)
    return _integer("labels", value) if not isinstance(value, bool) else int(value)


def weight(value: Any) -> float:
    """A per-file weight: a finite number >= 0."""
    return real("weights", _from_text("weights", value), minimum=0.0)


def _from_text(name: str, value: Any) -> Any:
    """A number read from a list file is text: "1", "0.3"."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} must be numbers, not {value!r}") from None


def shard(rank: Any, world_size: Any) -> tuple[int | None, int | None]:
    """(rank, world_size); None takes it from torch.distributed when iterating."""
    rank = None if rank is None else non_negative_int("rank", rank)
    world = None if world_size is None else positive_int("world_size", world_size)
    if rank is not None and world is not None and rank >= world:
        raise ConfigError(f"rank must be below world_size={world}, not {rank}")
    return rank, world


def entry_range(span: Any) -> tuple[int, int] | None:
    """One file's (start, stop), or None for all its entries."""
    if span is None:
        return None
    if isinstance(span, str) or len(span) != 2:
        raise ConfigError(f"an entry range is (start, stop), not {span!r}")
    return non_negative_int("entries start", span[0]), non_negative_int("entries stop", span[1])
