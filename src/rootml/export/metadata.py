"""rootml.json: rootml's metadata of one model version (Specs, layout, normalisation, labels,
training record), read with the fallback for repositories written before per-version metadata,
and checked before it is stored or served.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from rootml.errors import ModelError, RootmlError

log = logging.getLogger(__name__)

METADATA_FILE = "rootml.json"
# Bounds on what a rootml.json may ask the server to build per entry: a pad length (items kept
# of a jagged branch) or fixed-array width, and values per entry over all inputs. Real models use
# tens to a few thousand; a request padded to 1e9 columns would exhaust memory.
MAX_PAD_LENGTH = 1 << 16
MAX_ROW_VALUES = 1 << 20
_LEGACY_NOTED: set[Path] = set()


def read_metadata(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The rootml.json in `folder` (a version folder), or None when it has none. ModelError if
    unreadable or not a JSON object."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(metadata, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return metadata


def version_metadata(folder: str | os.PathLike, version: int) -> dict[str, Any] | None:
    """The rootml.json of `version` of the model in `folder`: the version's own, else a
    model-level one (repositories written before per-version metadata; noted once in the log as
    deprecated), else None."""
    folder = Path(folder)
    own = read_metadata(folder / str(version))
    if own is not None:
        return own
    legacy = read_metadata(folder)
    if legacy is not None and folder not in _LEGACY_NOTED:
        _LEGACY_NOTED.add(folder)
        log.warning(
            "%s: a model-level %s is deprecated (each version has its own now); it is taken as "
            "the metadata of the versions without one, and moved into them when a version is "
            "added",
            folder / METADATA_FILE,
            METADATA_FILE,
        )
    return legacy


def check_metadata(metadata: Any, what: str = METADATA_FILE) -> None:
    """Check a rootml.json (None: none) as the server uses it; ModelError naming the key.

    The format, layout, normalisation and pad value; its Specs must load and ask for at most
    MAX_PAD_LENGTH values per branch and entry (pad lengths, array widths), MAX_ROW_VALUES in all.
    """
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise ModelError(f"{what}: expected a JSON object")
    if metadata.get("format", 1) != 1:
        raise ModelError(f"{what}: unknown format {metadata.get('format')!r} (rootml reads 1)")
    if metadata.get("layout") not in (None, "flat", "collection"):
        raise ModelError(f"{what}: layout {metadata['layout']!r} is not 'flat' or 'collection'")
    normalization = metadata.get("normalization") or {}
    if not isinstance(normalization, dict) or normalization.get("method") not in (
        None,
        "standard",
        "minmax",
    ):
        raise ModelError(
            f"{what}: normalization must be {{'method': 'standard'|'minmax'|null, 'folded': "
            f"bool}}, not {normalization!r}"
        )
    pad_value = metadata.get("pad_value", 0.0)
    if pad_value is not None and (
        not isinstance(pad_value, (int, float)) or not math.isfinite(pad_value)
    ):
        raise ModelError(f"{what}: pad_value {pad_value!r} is not a finite number")
    if metadata.get("specs") is not None:
        _check_specs(metadata["specs"], what)


def _check_specs(data: Any, what: str) -> None:
    from rootml.transforms import Specs

    try:
        specs = Specs.from_dict(data)
    except (RootmlError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelError(f"{what}: cannot read its specs: {err!r}") from None
    total = 0
    for name, spec in specs.branches.items():
        if spec.kind not in ("flat", "fixed", "jagged"):
            raise ModelError(f"{what}: branch {name!r} has unknown kind {spec.kind!r}")
        size = specs.pad.get(name) if spec.kind == "jagged" else spec.width
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_PAD_LENGTH:
            word = "pad length" if spec.kind == "jagged" else "width"
            raise ModelError(
                f"{what}: branch {name!r} has {word} {size!r}; rootml takes 1 to "
                f"{MAX_PAD_LENGTH} values per branch and entry"
            )
        total += size
    if total > MAX_ROW_VALUES:
        raise ModelError(
            f"{what}: its specs make {total} values per entry, more than {MAX_ROW_VALUES}"
        )
