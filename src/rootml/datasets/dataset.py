"""RootIterableDataset: ROOT files (TTree or RNTuple, local or remote) -> whole batches of tensors."""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from rootml import defaults
from rootml._runtime import rank_world
from rootml._userfiles import import_function, read_list_file
from rootml.datasets import _arguments as args
from rootml.datasets._batching import Batcher
from rootml.datasets._cache import make_cache
from rootml.datasets._expressions import expression_branches, sort_key_branches
from rootml.datasets._files import resolve_files
from rootml.datasets._metadata import FileMeta, check_same, read_metadata, select_branches
from rootml.datasets._plan import Unit, order_units, plan_units, shard_units, split_nevts
from rootml.datasets._reader import UnitReader
from rootml.datasets._report import SharedReport
from rootml.datasets._resample import REPORT, Resampling, class_counts, file_class_counts, options
from rootml.datasets._reserved import (
    check_variables,
    exact_int64,
    float_targets,
    numbers_per_entry,
    policy_weights,
)
from rootml.datasets._transport import TensorBatch
from rootml.datasets.selection import Selection
from rootml.errors import (
    ConfigError,
    DataValueError,
    FileAccessError,
    RootmlError,
    SchemaError,
    UserCodeError,
    where,
)
from rootml.transforms import Specs, build_pipeline, to_torch
from rootml.transforms.normalize import METHODS, NAN_POLICIES
from rootml.transforms.pipeline import LAYOUTS
from rootml.transforms.specs import regularize_max_len

log = logging.getLogger(__name__)

PerFile = Sequence[Any] | Mapping[str, Any] | None


class RootIterableDataset(torch.utils.data.IterableDataset):
    """Stream ROOT (Parquet, HDF5) files as whole batches of padded tensors; use with
    DataLoader(ds, batch_size=None).

    Each batch is a dict: "features" float32 (B, F) in `feature_names` order, "mask" bool (B, F),
    "label" int64 (B,), "weight" float32 (B,), "file" int64 (B,) (index into `files`), "entry"
    int64 (B,), "ids" int64 (B, K) when `identifiers` are given, and "target" float32 (B, T)
    when `targets` are given.

    What is read: `selection=` (a rootml.datasets.Selection), or its fields as arguments: files,
    tree, branches, exclude, chunk_size (also positional), cut, aliases, entries, nevts,
    preprocess, redirector, retries, backoff, cache, cache_size (see Selection); arguments given besides
    `selection=` replace its fields. cut and aliases are checked against the branches at
    construction (SchemaError naming the expression).
    labels / weights: per file (list in file order, or dict url -> value); `label_branch` and
        `weight_branch` read them per entry (weights multiply). Labels and `identifiers` come out
        exactly or are refused (DataValueError naming branch and entry): integers and bools as
        stored, floats only when whole; uint64 values at or above 2**63 do not fit the int64
        "ids" and are refused. NaN/inf and negative weights are counted in `report`
        (nonfinite:<b>, negative:<b>) and follow `nan_policy` ("mask": weight 0).
    max_len: pad length of jagged branches: int >= 1, quantile in (0, 1), dict per branch,
        collection (counter, or prefix: "Jet" of "Jet_pt", "AnalysisJetsAuxDyn" of
        "AnalysisJetsAuxDyn:pt"), or None for the largest multiplicity (found by a first pass
        over the counts); a dict key naming no jagged branch or collection is refused.
    specs: a fitted Specs (pad lengths, statistics); its branches are the features when `branches`
        is None. Refused if fitted on other inputs unless `reuse_specs=True`.
    transform: callable on the padded block (dict of numpy arrays).
    shuffle: permute units per epoch (seed + epoch) and mix rows in a buffer of `shuffle_buffer`
        rows (default 2 x chunk_size: files mix in proportion once it spans several units).
        balance="class" multiplies weights so classes weigh the same.
    resample: "undersample" drops entries of the larger classes, "oversample" repeats entries of
        the smaller ones, so that smallest / largest class = `resample_ratio` (in (0, 1], default
        1: equal counts; ROOT RDataLoader's sampling_type / sampling_ratio). Each entry is used
        floor(f) or floor(f) + 1 times (f: its class's factor, `resampling.factors`), decided by
        a hash of (seed, epoch, file, entry): the same for any workers, ranks or resume, new
        each epoch. Weights are as read. The entries per class are counted after the cut: from
        the file labels without label_branch or cut, else in a pass over the label branch and
        the cut at construction. Dropped entries and added copies are in `report`
        (undersampled:<class>, oversampled:<class>). Not with balance.
    rank / world_size: default from torch.distributed when initialised, else 0 / 1.
    on_error: "raise" (default) or "skip" unreadable units (FileAccessError only: mistakes in the
        request are never skipped); skipped entries are in `report`, also per file.
    sort_by, nan_policy, normalize, layout: the value pipeline (rootml.transforms.build_pipeline).
        sort_by: collection -> key branch, e.g. {"Jet": "Jet_pt"}: items sorted descending
        ("+Jet_pt" ascending) before padding, so truncation keeps the leading ones.
        nan_policy: NaN/inf among real values are counted in `report` (nonfinite:<branch>) and
        kept ("keep"), refused ("raise": DataValueError) or made padding ("mask").
        normalize: None (values as read), "standard" or "minmax" per column from `specs`, which
        must hold statistics (rootml.fit_specs); padding stays `pad_value`.
        layout: "flat" or "collection": then the batch also holds per collection K (e.g. "Jet")
        K float32 (B, C, N) and K_mask bool (B, N), and "features" only the non-jagged branches.
    Files: ROOT (TTree, RNTuple), Parquet (.parquet: a row group is a cluster) and HDF5 (.h5: a
        group of datasets is a tree; rootml.datasets._hdf5), local or remote.
    targets: branches or aliases of one number per entry, the regression targets, never
        features: batch["target"] float32 (B, T) in this order. NaN/inf targets are counted in
        `report` (nonfinite:<branch>); "raise" refuses them, otherwise the entry gets target 0
        and weight 0 (it counts for nothing).
    reweight: multiply the weights by the kinematic reweighting fitted in `specs`
        (Specs.reweight, rootml.transforms.reweight), from each entry's class and variables.
    Raises ConfigError for an argument that cannot work (naming it and its value), and
    FileAccessError / SchemaError / SpecsMismatch / DataValueError with the file URL, tree,
    branch and entry range as attributes (err.url, err.tree, err.branch, err.entries).
    """

    def __init__(
        self,
        files: Any = None,
        tree: str | None = None,
        branches: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        labels: PerFile = None,
        identifiers: Sequence[str] | None = None,
        batch_size: int = defaults.BATCH_SIZE,
        chunk_size: int = defaults.CHUNK_SIZE,
        shuffle: bool = False,
        seed: int = 0,
        max_len: int | float | Mapping[str, int | float] | None = None,
        pad_value: float = 0.0,
        *,
        selection: Selection | None = None,
        label_branch: str | None = None,
        weights: PerFile = None,
        weight_branch: str | None = None,
        drop_last: bool = False,
        balance: str | None = None,
        shuffle_buffer: int | None = None,
        prefetch: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        specs: Specs | None = None,
        reuse_specs: bool = False,
        transform: Callable | None = None,
        on_error: str = "raise",
        sort_by: Mapping[str, str | tuple[str, bool]] | None = None,
        nan_policy: str = "keep",
        normalize: str | None = None,
        layout: str = "flat",
        targets: Sequence[str] | None = None,
        reweight: bool = False,
        resample: str | None = None,
        resample_ratio: float | None = None,
        **reading: Any,
    ):
        super().__init__()
        sel = Selection.of(
            selection, "RootIterableDataset", files=files, tree=tree, branches=branches,
            exclude=exclude, chunk_size=chunk_size, **reading,
        )  # fmt: skip
        if sel.files is None:
            raise ConfigError("no input files: give files, or selection=Selection(files, ...)")
        self.selection = sel
        self.chunk_size, self.retries, self.backoff = sel.chunk_size, sel.retries, sel.backoff
        self.cut, self.aliases = sel.cut, dict(sel.aliases or {})
        self.preprocess = sel.preprocess  # a "module.py:function" string is loaded in each worker
        self._set_options(
            on_error=on_error, balance=balance, batch_size=batch_size, shuffle_buffer=shuffle_buffer,
            prefetch=prefetch, seed=seed, pad_value=pad_value, rank=rank, world_size=world_size,
            nan_policy=nan_policy, normalize=normalize, layout=layout,
        )  # fmt: skip
        max_len = regularize_max_len(max_len)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.files, dict_labels = resolve_files(sel.files, sel.redirector)
        self.identifiers, self.label_branch, self.weight_branch = (
            list(identifiers or []),
            label_branch,
            weight_branch,
        )
        self.targets = [targets] if isinstance(targets, str) else list(targets or [])
        self.transform = transform
        self.cache = make_cache(sel.cache, sel.cache_size)
        metas = read_metadata(self.files, sel.tree, self.retries, self.backoff, self.cache)
        self.tree = next((m.tree for m in metas if m.tree is not None), None)
        self._report = SharedReport(self._report_keys(metas))
        self._select(metas, sel.branches, specs, sort_by)
        self._file_labels = self._per_file(
            dict_labels if labels is None else labels, "labels", 0, args.label
        )
        self._file_weights = self._per_file(weights, "weights", 1.0, args.weight)
        self._plan(metas, sel.nevts, sel.entries)
        self._class_weights = self._balance_weights(self.ranges) if balance == "class" else None
        self.resampling = self._resampling(resample, resample_ratio, balance)
        self.specs = self._fit_pad(specs, reuse_specs, max_len)
        self.first_meta = metas[0]  # what the first file holds (checks of later arguments)
        self._reweight = self._reweighting(reweight)
        self._pipeline = build_pipeline(
            self.specs, layout, pad_value=self.pad_value, sort_by=sort_by,
            nan_policy=nan_policy, normalize=normalize,
        )  # fmt: skip
        self.layout = self._pipeline.layout
        self.feature_names = self.layout.feature_names
        self._epoch, self._resume, self._current = 0, None, None

    def _set_options(self, **options: Any) -> None:
        """Check the batching, sharding and value settings; keep those read later."""
        self.on_error = args.one_of("on_error", options["on_error"], ("raise", "skip"))
        args.one_of("balance", options["balance"], (None, "class"))
        self.batch_size = args.positive_int("batch_size", options["batch_size"])
        buffer = options["shuffle_buffer"]
        self.shuffle_buffer = (
            2 * self.chunk_size
            if buffer is None
            else args.non_negative_int("shuffle_buffer", buffer)
        )
        self.prefetch = args.positive_int("prefetch", options["prefetch"])
        self.seed = args.non_negative_int("seed", options["seed"])
        self.pad_value = args.real("pad_value", options["pad_value"])
        self.rank, self.world_size = args.shard(options["rank"], options["world_size"])
        self.nan_policy = args.one_of("nan_policy", options["nan_policy"], NAN_POLICIES)
        args.one_of("normalize", options["normalize"], (None, *METHODS))
        if isinstance(options["layout"], str):
            args.one_of("layout", options["layout"], LAYOUTS)

    def _select(
        self, metas: Sequence[FileMeta], branches: Any, specs: Specs | None, sort_by: Any
    ) -> None:
        """The feature branches (`branch_info`), checked to exist alike in every file with the
        branches the cut, aliases and sort keys read."""
        if branches is None and specs is not None:
            branches = list(specs.branches)  # the Specs' features, not every branch of the file
        exclude = self.selection.exclude
        self.branch_info = select_branches(metas, branches, exclude, self._reserved(), self.aliases)
        read = expression_branches(self.cut, self.aliases, metas[0].keys, metas[0].url, self.tree)
        sort_keys = sort_key_branches(sort_by, metas[0], self.aliases)
        check_same(metas, [*self.branch_info, *self._reserved(), *read, *sort_keys], self.aliases)

    def _plan(self, metas: Sequence[FileMeta], nevts: Any, entries: Any) -> None:
        """The selected entry range of each file (`ranges`, before the cut) and its work units."""
        self.ranges = self._ranges(metas, nevts, entries)
        self.num_entries = int(sum(stop - start for start, stop in self.ranges))
        boundaries = [m.boundaries for m in metas]
        units = plan_units(self.ranges, self.chunk_size, boundaries)
        self._units = [u for u in units if u.stop > u.start]
        for meta in metas:
            if meta.entries == 0:
                self._report.add("empty_files", 1)
                log.warning("%s: no entries; skipped", where(meta.url, meta.tree))

    def _reserved(self) -> dict[str, str]:
        """Identifier, label and weight branches -> the argument naming them."""
        reserved = {name: "identifiers" for name in self.identifiers}
        if self.label_branch:
            reserved[self.label_branch] = "label_branch"
        if self.weight_branch:
            reserved[self.weight_branch] = "weight_branch"
        for name in self.targets:
            reserved[name] = "targets"
        return reserved

    def _report_keys(self, metas: Sequence[FileMeta]) -> list[str]:
        names = [*metas[0].branches, *self.aliases]
        return [
            "empty_files",
            "skipped_units",
            "skipped_entries",
            "dropped_last",
            *(f"{what}:{name}" for what in ("truncated", "nonfinite") for name in names),
            *([f"negative:{self.weight_branch}"] if self.weight_branch else []),
            *(f"skipped:{url}" for url in self.files),
        ]

    # -- public state ------------------------------------------------------------------------
    @property
    def report(self) -> Counter:
        """What was skipped, truncated or dropped since construction, summed over this process
        and its DataLoader workers: empty_files, skipped_units, skipped_entries and
        skipped:<url> (on_error="skip"), dropped_last (drop_last), truncated:<branch> (items cut
        by padding), nonfinite:<branch> (NaN/inf values), negative:<weight_branch>,
        undersampled:<class> (entries dropped) and oversampled:<class> (copies added)."""
        return self._report.counts()

    def fingerprint(self) -> dict[str, Any]:
        """What a Specs fitted for this dataset must have been fitted on."""
        return {
            "files": list(self.files),
            "tree": self.tree,
            "branches": list(self.branch_info),
            "cut": self.cut,
            "aliases": self.aliases or None,
        }

    @property
    def file_labels(self) -> list[int]:
        """The label of each file of `files` (0 without labels; label_branch labels per entry)."""
        return list(self._file_labels)

    @property
    def plan(self) -> list[Unit]:
        """Every work unit of the selection, in file and entry order (before sharding)."""
        return list(self._units)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration (shuffling is seeded by seed + epoch)."""
        self._epoch = int(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where this process' iteration stands: epoch and batches yielded so far (torchdata
        StatefulDataLoader calls it in each worker). Resuming replays the epoch's reads and skips
        those batches, so no entry is repeated or lost."""
        state = self._current or {"epoch": self._epoch, "batches": 0}
        return {**state, "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if (
            state.get("seed", self.seed) != self.seed
            or state.get("shuffle", self.shuffle) != self.shuffle
        ):
            raise RootmlError("state_dict was saved with another seed or shuffle setting")
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
        self._epoch = self._resume["epoch"]

    def units(
        self, epoch: int, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
    ) -> list[Unit]:
        """The work units one worker of one rank reads in `epoch` (no I/O)."""
        ordered = order_units(self._units, self.shuffle, self.seed, epoch)
        return shard_units(ordered, rank, world_size, worker, num_workers)

    # -- iteration -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        resume, self._resume = self._resume or {"epoch": self._epoch, "batches": 0}, None
        epoch, skip = resume["epoch"], resume["batches"]
        self._epoch = epoch + 1
        rank, world, worker, workers = self._shard()
        units = self.units(epoch, rank, world, worker, workers)
        rng = (
            np.random.default_rng([self.seed, epoch, rank * workers + worker])
            if self.shuffle
            else None
        )
        batcher = Batcher(self.batch_size, self.shuffle_buffer, rng)
        self._current = {"epoch": epoch, "batches": 0}
        for block in self._blocks(units, epoch):
            for batch in batcher.add(block):
                yield from self._emit(batch, skip)
        dropped = batcher.waiting % self.batch_size if self.drop_last else 0
        for batch in batcher.finish(self.drop_last):
            yield from self._emit(batch, skip)
        if dropped:
            self._report.add("dropped_last", dropped)
        self._current = {"epoch": epoch + 1, "batches": 0}

    def _emit(self, batch: dict[str, np.ndarray], skip: int) -> Iterator[dict[str, torch.Tensor]]:
        self._current["batches"] += 1
        if self._current["batches"] > skip:
            yield TensorBatch(to_torch(batch))  # a dict; pickles as one buffer out of workers

    def _blocks(self, units: Sequence[Unit], epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """Blocks of rows, one per unit, `prefetch` units ahead: one thread reads units, another
        turns the units read into blocks, so padding one unit overlaps reading the next (uproot's
        decompression and numpy release the GIL)."""
        reader = self._reader()
        pending: deque = deque()
        todo = iter(units)
        with (
            ThreadPoolExecutor(1, thread_name_prefix="rootml-read") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="rootml-layout") as shaper,
        ):
            try:
                for unit in todo:
                    read = pool.submit(reader.read, unit)
                    pending.append((unit, shaper.submit(self._read_block, read, unit, epoch), read))
                    if len(pending) < self.prefetch:
                        continue
                    block = self._result(*pending.popleft()[:2])
                    if block is not None:
                        yield block
                while pending:
                    block = self._result(*pending.popleft()[:2])
                    if block is not None:
                        yield block
            finally:
                for _, future, read in pending:
                    future.cancel()
                    read.cancel()
                try:
                    pool.submit(reader.close)  # after the reads still queued in its thread
                except RuntimeError:  # the interpreter is exiting: no new futures
                    reader.close()
                release = getattr(self.layout, "release", None)
                if release is not None:  # arrays kept for reuse between chunks
                    release()

    def _result(self, unit: Unit, future: Any) -> dict[str, np.ndarray] | None:
        try:
            return future.result()
        except FileAccessError as err:
            # Only unreadable data is skipped: a mistake in the request (SchemaError,
            # ConfigError) or refused values (DataValueError) always stop the iteration.
            if self.on_error == "raise" or isinstance(err, UserCodeError):
                raise
            url = err.url if err.url in self.files else self.files[unit.file]
            start, stop = err.entries or (unit.start, unit.stop)
            self._report.add("skipped_units", 1)
            self._report.add("skipped_entries", stop - start)
            self._report.add(f"skipped:{url}", stop - start)
            log.warning("skipped (on_error='skip'): %s", err)
            return None

    def _reader(self, max_open: int | None = None) -> UnitReader:
        names = [
            *self.branch_info,
            *self.identifiers,
            *filter(None, [self.label_branch, self.weight_branch]),
            *self._pipeline.sort.keys,
            *self.targets,
            *(self._reweight.variables if self._reweight is not None else []),
        ]
        extra = {} if max_open is None else {"max_open": max_open}
        return UnitReader(
            self.files, self.tree, names, self.aliases, self.cut, self.retries, self.backoff,
            cache=self.cache, **extra,
        )  # fmt: skip

    def labels_weights(
        self, columns: Mapping[str, Any], unit: Unit, entries: np.ndarray, context: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """(label int64, weight float32) of each entry of a unit read: the file's label or
        label_branch, the file's weight times weight_branch (before balance and reweighting)."""
        n = len(entries)
        label = np.full(n, self._file_labels[unit.file], dtype=np.int64)
        if self.label_branch:
            label = exact_int64(
                columns[self.label_branch], "label_branch", self.label_branch, entries, **context
            )
        weight = np.full(n, self._file_weights[unit.file], dtype=np.float32)
        if self.weight_branch:
            weight *= policy_weights(
                columns[self.weight_branch], self.weight_branch, self.nan_policy, self._report,
                entries, **context,
            )  # fmt: skip
        return label, weight

    def _read_block(self, read: Future, unit: Unit, epoch: int) -> dict[str, np.ndarray]:
        columns, entries = read.result()
        context = {"url": self.files[unit.file], "tree": self.tree, "entries": unit[1:]}
        if self.preprocess is not None:
            columns = _load_hook(self.preprocess)(columns)
        try:
            block = self._pipeline(columns)
        except DataValueError as err:
            raise DataValueError(err.message, **{**context, **err.context}) from err
        except (TypeError, ValueError, KeyError) as err:
            raise SchemaError(f"cannot turn the branches into numbers: {err}", **context) from err
        for kind, counts in block.pop("stats").items():
            for branch, count in counts.items():
                self._report.add(f"{kind}:{branch}", count)
        n = len(entries)
        label, weight = self.labels_weights(columns, unit, entries, context)
        if self._class_weights is not None:
            weight *= self._class_weights[unit.file]
        if self._reweight is not None:
            weight *= self._reweight.weights(
                self.reweight_columns(columns, entries, context), label
            )
        if self.targets:
            block["target"], valid = float_targets(
                columns, self.targets, self.nan_policy, self._report, entries, **context
            )
            weight = np.where(valid, weight, np.float32(0))
        block.update(
            label=label, weight=weight, file=np.full(n, unit.file, dtype=np.int64), entry=entries
        )
        if self.identifiers:
            block["ids"] = np.stack(
                [
                    exact_int64(columns[i], "identifiers", i, entries, **context)
                    for i in self.identifiers
                ],
                axis=1,
            ).reshape(n, len(self.identifiers))
        if self.resampling is not None:
            block, changed = self.resampling.apply(block, unit.file, epoch)
            for label, count in changed.items():
                self._report.add(f"{self.resampling.report_key}:{label}", count)
        return self.transform(block) if self.transform is not None else block

    def _shard(self) -> tuple[int, int, int, int]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            group_rank, group_world = rank_world()
            rank = group_rank if rank is None else rank
            world = group_world if world is None else world
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world, worker, workers

    # -- construction helpers ----------------------------------------------------------------
    def _per_file(self, values: PerFile, what: str, default: Any, cast: Callable) -> list[Any]:
        if values is None:
            return [default] * len(self.files)
        if isinstance(values, str) and os.path.isfile(values):
            values = read_list_file(values)
        if isinstance(values, Mapping):
            unknown = set(values) - set(self.files)
            if unknown:
                raise ConfigError(f"{what} name files that are not inputs: {sorted(unknown)}")
            return [cast(values.get(url, default)) for url in self.files]
        if isinstance(values, str) or not isinstance(values, (Sequence, np.ndarray)):
            raise ConfigError(
                f"{what} must be a list per file or a dict file -> value, not {values!r}"
            )
        values = list(values)
        if len(values) != len(self.files):
            raise ConfigError(f"{len(values)} {what} for {len(self.files)} files")
        return [cast(v) for v in values]

    def _ranges(self, metas: Sequence[FileMeta], nevts: Any, entries: Any) -> list[tuple[int, int]]:
        spans = (
            entries
            if entries is not None and not isinstance(entries, tuple)
            else [entries] * len(metas)
        )
        spans = self._per_file(spans, "entry ranges", None, args.entry_range)
        ranges = []
        for meta, span in zip(metas, spans):
            start, stop = (0, meta.entries) if span is None else span
            if not 0 <= start <= stop <= meta.entries:
                raise ConfigError(
                    f"entry range {start}-{stop} is outside 0-{meta.entries}",
                    url=meta.url,
                    tree=meta.tree,
                )
            ranges.append((start, stop))
        if nevts is None:
            return ranges
        sizes = [stop - start for start, stop in ranges]
        if isinstance(nevts, int):
            counts = split_nevts(sizes, nevts)
        else:
            counts = [
                size if n is None else min(n, size)
                for n, size in zip(self._per_file(nevts, "nevts", None, args.file_nevts), sizes)
            ]
        return [(start, start + n) for (start, _), n in zip(ranges, counts)]

    def _balance_weights(self, ranges: Sequence[tuple[int, int]]) -> list[float]:
        if self.label_branch:
            raise ConfigError("balance='class' needs per-file labels, not label_branch")
        per_class = file_class_counts(self._file_labels, ranges)
        total = sum(per_class.values())
        return [total / (len(per_class) * per_class[label]) for label in self._file_labels]

    def _resampling(self, mode: Any, ratio: Any, balance: Any) -> Resampling | None:
        """The under/oversampling of `mode`, from the entries per class after the cut (a
        counting pass with label_branch or a cut); its counts become report keys."""
        if mode is None:
            if ratio is not None:
                raise ConfigError(f"resample_ratio={ratio!r} needs resample='undersample' or 'oversample'")  # fmt: skip
            return None
        mode, ratio = options(mode, ratio)  # before the counting pass
        if balance is not None:
            raise ConfigError(f"resample={mode!r} and balance={balance!r} both balance the classes; give one")  # fmt: skip
        resampling = Resampling(mode, ratio, class_counts(self), self.seed)
        self._report.extend(f"{REPORT[mode]}:{c}" for c in resampling.counts)
        log.info("%r", resampling)
        return resampling

    def _reweighting(self, reweight: bool) -> Any:
        if not reweight:
            return None
        if self.specs.reweight is None or not self.specs.reweight.hist:
            raise ConfigError("reweight=True needs Specs fitted with a reweighting (reweight_vars)")
        check_variables(self.specs.reweight.variables, self.first_meta, self.aliases)
        return self.specs.reweight

    def reweight_columns(
        self, columns: Mapping[str, Any], entries: np.ndarray, context: dict, reweight: Any = None
    ) -> dict[str, np.ndarray]:
        """The reweighting variables (of `reweight`, default this dataset's) of a unit read, one
        number per entry (SchemaError if not)."""
        variables = (reweight or self._reweight).variables
        return {
            name: numbers_per_entry(columns[name], "reweight_vars", name, **context)
            for name in variables
        }

    def _fit_pad(self, specs: Specs | None, reuse: bool, max_len: Any) -> Specs:
        if specs is not None:
            if not reuse:
                specs.check(self.fingerprint())
            missing = set(self.branch_info) - set(specs.branches)
            if missing:
                raise SchemaError(f"the Specs have no statistics for branches {sorted(missing)}")
            if max_len is not None:
                log.warning("max_len=%r is not used: the pad lengths come from specs", max_len)
            return specs
        from rootml.datasets._multiplicity import multiplicity_specs

        return multiplicity_specs(self, max_len)


@functools.lru_cache(maxsize=8)
def _load_hook(spec: str | Callable) -> Callable:
    """The user's preprocessing hook: a callable, or "path/to/module.py:function" loaded at run
    time (UserCodeError when it cannot be)."""
    if callable(spec):
        return spec
    path, _, name = spec.rpartition(":")
    if not path:
        raise UserCodeError(f"preprocess hook {spec!r}: expected module.py:function")
    return import_function(path, name, "preprocess hook")
