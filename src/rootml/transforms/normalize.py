"""Normalisation per feature from the fitted Specs, and the policy for NaN/inf values.

Both work on the block a layout produced (dict of numpy arrays) and keep padding as it is:
where the mask is False the value stays `pad_value`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rootml.errors import ConfigError, DataValueError, SpecsMismatch
from rootml.transforms.collection import layout_parts

METHODS = ("standard", "minmax")
NAN_POLICIES = ("keep", "raise", "mask")


class Normalize:
    """x' = (x - offset) / scale per feature, from the statistics in `specs`.

    method "standard": offset = mean, scale = std (1 where std is 0: a constant column becomes
    0); "minmax": offset = min, scale = max - min (1 where that is 0). A branch's statistics are
    shared by all its columns (flat layout: "Jet_pt[0]".."Jet_pt[N-1]") or by its channel
    (collection layout). Branches without any real value get offset 0, scale 1.
    Values where the mask is False stay `pad_value`. Arithmetic is float32, like the features,
    with the offset split in two float32 parts (`split_offset`), so that large-valued columns
    (a luminosity block near 2.27e6) come out as the float64 (x - offset) / scale rounded to
    float32, not shifted by the rounding of the offset to float32.

    layout: "flat", "collection" or the layout object producing the blocks. Raises SpecsMismatch
    when `specs` holds no statistics (only pad lengths), ConfigError for an unknown method.
    `offset` and `scale` ((F,) float64) are those of the flat "features", e.g. to fold them into
    an exported model's first layer.
    """

    def __init__(self, specs: Any, method: str = "standard", pad_value: float = 0.0, layout="flat"):
        if method not in METHODS:
            raise ConfigError(f"normalize must be one of {METHODS} or None, not {method!r}")
        if not specs.entries or not any(s.count for s in specs.branches.values()):
            raise SpecsMismatch(
                f"normalize={method!r} needs a Specs with statistics, but these hold only pad "
                "lengths: fit them first (rootml.datasets.fit_specs, or `rootml specs FILES -o "
                "specs.json` and Specs.load) and pass specs="
            )
        self.method, self.pad_value = method, float(pad_value)
        from rootml.transforms.pipeline import make_layout

        self.layout = make_layout(specs, layout, pad_value)
        offsets, scales = _branch_scales(specs, method)
        # key -> (mask key, offset high and low parts, scale) as float32, shaped to broadcast
        # against the array.
        self._parts: dict[str, tuple[str, np.ndarray, np.ndarray, np.ndarray]] = {}
        for key, mask_key, branches in layout_parts(self.layout):
            offset = np.asarray([offsets[b] for b in branches], dtype=np.float64)
            scale = np.asarray([scales[b] for b in branches], dtype=np.float64)
            if key != "features":  # (n, C, N): one value per channel
                offset, scale = offset[:, None], scale[:, None]
            if key == "features":
                self.offset, self.scale = offset, scale
            self._parts[key] = (mask_key, *split_offset(offset), scale.astype(np.float32))

    def __call__(self, block: Mapping[str, Any]) -> dict[str, Any]:
        """The block with every feature array normalised (new arrays; other keys as they are)."""
        out = dict(block)
        for key, (mask_key, high, low, scale) in self._parts.items():
            values = np.subtract(block[key], high)
            values -= low
            values /= scale
            out[key] = _keep_padding(values, block[mask_key], self.pad_value)
        return out

    def inverse(self, block: Mapping[str, Any]) -> dict[str, Any]:
        """Undo the normalisation: x = x' * scale + offset (padding stays `pad_value`)."""
        out = dict(block)
        for key, (mask_key, high, low, scale) in self._parts.items():
            values = np.multiply(block[key], scale)
            values += low
            values += high
            out[key] = _keep_padding(values, block[mask_key], self.pad_value)
        return out

    def __repr__(self) -> str:
        return f"Normalize(method={self.method!r}, {len(self.offset)} features)"


class NonFinite:
    """Count NaN/inf among the real values of a block (padding is not looked at) and apply a policy.

    policy "keep": values are left as they are; "raise": DataValueError naming the branches;
    "mask": the values become `pad_value` and their mask False (collection layout: the whole
    item, all its channels, since the mask is per item). Adds block["stats"]["nonfinite"]:
    {branch: number of non-finite values}, only branches that had any.
    Items cut by truncation are not seen (they never reach the features).
    """

    def __init__(self, layout: Any, policy: str = "keep", pad_value: float = 0.0):
        if policy not in NAN_POLICIES:
            raise ConfigError(f"nan_policy must be one of {NAN_POLICIES}, not {policy!r}")
        self.policy, self.pad_value = policy, float(pad_value)
        self._parts = layout_parts(layout)

    def __call__(self, block: Mapping[str, Any]) -> dict[str, Any]:
        block = dict(block)
        found: dict[str, int] = {}
        for key, mask_key, branches in self._parts:
            values, mask = block[key], block[mask_key]
            # A sum is NaN or infinite when any value is (and, rarely, when finite values
            # overflow it): one pass without a temporary array, exact check only then.
            with np.errstate(over="ignore", invalid="ignore"):
                if np.isfinite(np.add.reduce(values, axis=None)):
                    continue
            bad = ~np.isfinite(values)
            if not bad.any():
                continue
            item_mask = mask if values.ndim == mask.ndim else mask[:, None, :]
            bad &= item_mask
            per_index = bad.sum(axis=(0, 2) if values.ndim == 3 else 0)
            for branch, count in zip(branches, per_index):
                if count:
                    found[branch] = found.get(branch, 0) + int(count)
            if self.policy == "mask" and per_index.any():
                dropped = bad if values.ndim == mask.ndim else bad.any(axis=1)
                mask = mask & ~dropped
                block[key] = _keep_padding(values.copy(), mask, self.pad_value)
                block[mask_key] = mask
        if found and self.policy == "raise":
            listed = ", ".join(f"{b!r}: {n}" for b, n in found.items())
            raise DataValueError(
                f"non-finite values (NaN/inf) in branch {listed}; pass nan_policy='mask' to "
                "replace them by pad_value and mask them, or 'keep'"
            )
        stats = dict(block.get("stats", {}))
        stats["nonfinite"] = found
        block["stats"] = stats
        return block

    def __repr__(self) -> str:
        return f"NonFinite(policy={self.policy!r})"


def split_offset(offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float64 offset as float32 (high, low) with high + low = offset to about 2**-48.

    float32(offset) alone is off by up to half its ulp: 0.125 near 2.27e6, 0.09 sigma of a
    column whose std is 1.4. Computing (x - high) - low in float32 removes that: x - high is
    exact for x within a factor 2 of the offset (Sterbenz), and subtracting low then rounds
    once, so the result is the exact (x - offset) to float32 precision. Training (numpy), the
    exported graph (two Sub nodes) and serving compute it the same way.
    """
    offset = np.asarray(offset, dtype=np.float64)
    high = offset.astype(np.float32)
    return high, (offset - high.astype(np.float64)).astype(np.float32)


def _branch_scales(specs: Any, method: str) -> tuple[dict[str, float], dict[str, float]]:
    offsets, scales = {}, {}
    for name, spec in specs.branches.items():
        if method == "standard":
            offset, scale = spec.mean, spec.std
        else:
            offset, scale = spec.min, spec.max - spec.min
        if not spec.count or not np.isfinite(offset):
            offset, scale = 0.0, 1.0
        offsets[name] = float(offset)
        # A scale that float32 cannot divide by (0, subnormal, inf) counts as a constant column.
        usable = np.isfinite(scale) and scale >= np.finfo(np.float32).tiny
        scales[name] = float(scale) if usable else 1.0
    return offsets, scales


def _keep_padding(values: np.ndarray, mask: np.ndarray, pad_value: float) -> np.ndarray:
    """`values` with `pad_value` where `mask` is False; mask (n, N) applies to all channels of
    (n, C, N) values."""
    if values.ndim != mask.ndim:
        mask = mask[:, None, :]
    if not mask.all():
        np.copyto(values, np.float32(pad_value), where=~mask)
    return values
