"""The statistics pass: Specs (and optionally histograms per class) in one streaming pass.

Files are read in parallel threads, one UnitReader per file; each file's part is a Specs updated
chunk by chunk, and the parts are merged exactly (counts, moments, min/max and multiplicity
histograms add up) in file order, so the result does not depend on thread timing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rootml.datasets import _arguments as args
from rootml.datasets._plan import Unit
from rootml.datasets._reader import UnitReader
from rootml.datasets._reserved import check_variables
from rootml.datasets.dataset import RootIterableDataset, _load_hook
from rootml.datasets.selection import Selection
from rootml.errors import ConfigError
from rootml.progress import Progress
from rootml.transforms import Specs
from rootml.transforms.hist import Histograms
from rootml.transforms.reweight import Reweighting
from rootml.transforms.specs import regularize_max_len

log = logging.getLogger(__name__)

# Entries read per file to fix the histogram bins when no fitted Specs gives the ranges.
_RANGE_SAMPLE = 20_000
_RANGE_FILES = 32


def fit_specs(
    files: Any = None,
    tree: str | None = None,
    branches: Sequence[str] | None = None,
    *,
    selection: Selection | None = None,
    max_len: int | float | Mapping[str, int | float] | None = None,
    seed: int = 0,
    workers: int = 4,
    reweight: Reweighting | None = None,
    labels: Any = None,
    label_branch: str | None = None,
    weights: Any = None,
    weight_branch: str | None = None,
    nan_policy: str = "keep",
    **reading: Any,
) -> Specs:
    """Fit a Specs: per-branch count, mean, std, min, max, NaN/inf count and multiplicity
    histograms, the pad lengths from `max_len`, and the fingerprint of the inputs.

    What is read: `selection=` (a rootml.datasets.Selection) or its fields as arguments (files,
    tree, branches, exclude, cut, aliases, entries, nevts, chunk_size, preprocess, redirector,
    retries, backoff), resolved as RootIterableDataset does: its fingerprint is the Specs' one,
    so a dataset of the same selection accepts these Specs. entries: e.g. the training part of
    each file. nevts: a random sample of about that many entries (before the cut): random work
    units of the plan, seeded by `seed`, the last one shortened; None reads every entry.
    max_len: as RootIterableDataset, applied to the fitted multiplicities (quantiles use the
    definition of BranchSpec.multiplicity_quantile). workers: files read at once. Raises what
    reweight: an unfitted rootml.transforms.reweight.Reweighting whose per-class histograms are
    filled in the same pass (Specs.reweight), with each entry's class and weight from labels /
    label_branch / weights / weight_branch / nan_policy as RootIterableDataset takes them.
    Raises what RootIterableDataset raises (FileAccessError, SchemaError).
    """
    sel = Selection.of(selection, "fit_specs", files=files, tree=tree, branches=branches, **reading)
    classes = dict(
        labels=labels, label_branch=label_branch, weights=weights, weight_branch=weight_branch,
        nan_policy=nan_policy,
    )  # fmt: skip
    return _fit(sel, classes, max_len, seed, workers, reweight=reweight)[0]


def fit_histograms(
    files: Any = None,
    tree: str | None = None,
    branches: Sequence[str] | None = None,
    *,
    selection: Selection | None = None,
    max_len: int | float | Mapping[str, int | float] | None = None,
    labels: Any = None,
    class_names: Mapping[int, str] | None = None,
    bins: int = 50,
    ranges: Specs | None = None,
    seed: int = 0,
    workers: int = 4,
    **reading: Any,
) -> tuple[Specs, Histograms]:
    """fit_specs plus histograms of every branch per class, filled in the same pass.

    labels: the class of each file (as RootIterableDataset's labels); class_names: label -> name
    for the legends. The bins span [min, max] of `ranges` (a fitted Specs) when given, otherwise
    of a small first sample (the first entries of each file, up to 32 files): values beyond that
    range land in the edge bins and are counted in Histograms.outside.
    """
    sel = Selection.of(
        selection, "fit_histograms", files=files, tree=tree, branches=branches, **reading
    )
    hist = (class_names, args.positive_int("bins", bins), ranges)
    return _fit(sel, {"labels": labels}, max_len, seed, workers, hist)


def _fit(
    sel: Selection,
    classes: dict[str, Any],
    max_len: Any,
    seed: int,
    workers: int,
    hist: tuple | None = None,
    reweight: Reweighting | None = None,
) -> tuple[Specs, Histograms | None]:
    nevts = sel.nevts
    if nevts is not None and not isinstance(nevts, int):
        raise ConfigError(f"nevts must be a number of entries to sample, not {nevts!r}")
    max_len = regularize_max_len(max_len)
    seed = args.non_negative_int("seed", seed)
    workers = args.positive_int("workers", workers)
    unit_size = sel.chunk_size
    if nevts is not None:
        # Small enough units that the sample is drawn from about 16 places or more.
        unit_size = min(unit_size, max(-(-nevts // 16), 1000))
    # The dataset's constructor resolves files and branches and plans the units; an int max_len
    # skips its multiplicity pass (still made when there are aliases, to learn their kinds).
    # classes: the dataset arguments giving each entry's class and weight.
    ds = RootIterableDataset(
        selection=sel.replace(chunk_size=unit_size, nevts=None), max_len=1, **classes
    )
    kinds = {n: (s.kind, s.width, s.collection) for n, s in ds.specs.branches.items()}
    if reweight is not None:
        check_variables(reweight.variables, ds.first_meta, ds.aliases)
    units = ds.units(0)
    if nevts is not None:
        units = _sample(units, nevts, seed)
    histograms = _histograms(ds, kinds, units, *hist) if hist is not None else None
    by_file: dict[int, list[Unit]] = {}
    for unit in units:
        by_file.setdefault(unit.file, []).append(unit)
    what = "Specs and histograms" if histograms is not None else "Specs"
    bar = Progress(f"fitting {what}", sum(u.stop - u.start for u in units))
    specs = Specs.empty(kinds, ds.fingerprint())
    specs.reweight = reweight.empty_copy() if reweight is not None else None
    with bar, ThreadPoolExecutor(max(1, min(int(workers), len(by_file)))) as pool:
        parts = pool.map(
            lambda units: _fit_file(ds, kinds, histograms, reweight, units, bar), by_file.values()
        )
        for part, part_hist in parts:
            specs.merge(part)
            if histograms is not None:
                histograms.merge(part_hist)
    specs.resolve_pad(max_len)
    log.info("fitted Specs on %d entries of %d files", specs.entries, len(by_file))
    return specs, histograms


def _fit_file(
    ds: RootIterableDataset,
    kinds: dict[str, tuple],
    histograms: Histograms | None,
    reweight: Reweighting | None,
    file_units: list[Unit],
    bar: Progress,
) -> tuple[Specs, Histograms | None]:
    """The Specs (and histograms) of one file's units, read in this thread."""
    part = Specs.empty(kinds, ds.fingerprint())
    part.reweight = reweight.empty_copy() if reweight is not None else None
    part_hist = histograms.empty_copy() if histograms is not None else None
    reader = _reader(ds, reweight)
    try:
        for unit in file_units:
            columns, entries = _read(ds, reader, unit)
            part.update(columns)
            if reweight is not None:
                _fill_reweight(ds, part.reweight, columns, unit, entries)
            if part_hist is not None:
                label = part_hist.classes.index(ds.file_labels[unit.file])
                part_hist.update(columns, np.full(len(entries), label))
            bar.update(unit.stop - unit.start)
    finally:
        reader.close()
    return part, part_hist


def _sample(units: Sequence[Unit], nevts: int, seed: int) -> list[Unit]:
    """Random units holding `nevts` entries in all (the last one shortened), in file order."""
    chosen, total = [], 0
    for i in np.random.default_rng(seed).permutation(len(units)):
        if total >= nevts:
            break
        unit = units[i]
        take = min(unit.stop - unit.start, nevts - total)
        chosen.append(Unit(unit.file, unit.start, unit.start + take))
        total += take
    return sorted(chosen)


def _reader(ds: RootIterableDataset, reweight: Reweighting | None = None) -> UnitReader:
    names = list(ds.branch_info)
    if reweight is not None:  # the variables, and what gives each entry's class and weight
        names += [*reweight.variables, *filter(None, [ds.label_branch, ds.weight_branch])]
    return UnitReader(
        ds.files, ds.tree, names, ds.aliases, ds.cut, ds.retries, ds.backoff, max_open=1,
        cache=ds.cache,
    )  # fmt: skip


def _fill_reweight(ds, reweight: Reweighting, columns: dict, unit: Unit, entries) -> None:
    context = {"url": ds.files[unit.file], "tree": ds.tree, "entries": unit[1:]}
    label, weight = ds.labels_weights(columns, unit, entries, context)
    reweight.update(ds.reweight_columns(columns, entries, context, reweight), label, weight)


def _read(ds: RootIterableDataset, reader: UnitReader, unit: Unit) -> tuple[dict, np.ndarray]:
    columns, entries = reader.read(unit)
    if ds.preprocess is not None:
        columns = _load_hook(ds.preprocess)(columns)
    return columns, entries


def _histograms(
    ds: RootIterableDataset,
    kinds: dict[str, tuple],
    units: Sequence[Unit],
    class_names: Mapping[int, str] | None,
    bins: int,
    ranges: Specs | None,
) -> Histograms:
    classes = sorted(set(ds.file_labels))
    names = [(class_names or {}).get(c, str(c)) for c in classes]
    histograms = Histograms({n: k[0] for n, k in kinds.items()}, classes, bins, names)
    if ranges is not None:
        histograms.set_ranges({n: (s.min, s.max) for n, s in ranges.branches.items()})
        return histograms
    first: dict[int, Unit] = {}
    for unit in units:
        first.setdefault(unit.file, unit)
    per_file = _RANGE_SAMPLE // max(min(len(first), _RANGE_FILES), 1)
    sample = Specs.empty(kinds, {})
    reader = _reader(ds)
    try:
        for unit in list(first.values())[:_RANGE_FILES]:
            short = Unit(unit.file, unit.start, min(unit.stop, unit.start + max(per_file, 1)))
            sample.update(_read(ds, reader, short)[0])
    finally:
        reader.close()
    histograms.set_ranges({n: (s.min, s.max) for n, s in sample.branches.items()})
    return histograms
