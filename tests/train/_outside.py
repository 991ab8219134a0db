"""The training inputs rebuilt outside rootml (plain uproot + awkward + numpy): the oracle the
training tests compare rootml's runs with."""

from __future__ import annotations

import awkward as ak
import numpy as np
import uproot


def outside_features(files, branches, max_len, stats=None, entries=None):
    """(events, features) float32 of `branches` in order: jagged ones cut to their first
    `max_len` items, padding 0, each standardised with stats[branch] = (mean, std), by default
    the branch's own mean and std over all its values here (every item of a jagged branch, as
    Specs defines them). entries: (start, stop) read from every file (default: all)."""
    start, stop = entries or (None, None)
    arrays = [
        uproot.open(path)["Events"].arrays(branches, entry_start=start, entry_stop=stop)
        for path in files
    ]
    columns = []
    for name in branches:
        values = ak.concatenate([a[name] for a in arrays])
        flat = ak.to_numpy(ak.flatten(values) if values.ndim > 1 else values).astype(np.float64)
        mean, std = stats[name] if stats else (flat.mean(), flat.std() or 1.0)
        if values.ndim == 1:
            columns.append(((flat - mean) / std)[:, None])
            continue
        padded = ak.to_numpy(ak.fill_none(ak.pad_none(values, max_len, clip=True), np.nan))
        padded = padded.astype(np.float64)
        columns.append(np.where(np.isnan(padded), 0.0, (padded - mean) / std))
    return np.concatenate(columns, axis=1).astype(np.float32)
