"""Predictions out: score ROOT files with a model and write the scores entry by entry.

```python
from rootml.predict import predict
predict("models/tth", ["signal.root"], "signal_scores.root")          # local onnxruntime
predict("http://127.0.0.1:8000/tth", files, ["scores/", "all.parquet"])  # through a server
```
Files are read through the streaming layer (RootIterableDataset with the model's Specs, its
normalisation as rootml.json says, no shuffling, no cut: every entry), the model runs on whole
batches, and the scores come out in (file, entry) order, written in chunks so memory stays bounded:

- a friend tree per input file: a TTree named as the input's tree (or `out_tree`; "Events" for a
  Parquet input, the group's name for HDF5), one branch per model output, entry i scoring entry
  i of the input; open it next to the input with uproot (``uproot.open(out)[tree]``) or ROOT
  (``tree->AddFriend``); with `rntuple=True` an RNTuple instead (uproot's writer, one field per
  output, one cluster per flush), for RNTuple inputs or readers that want one;
- a parquet file (awkward's writer) with columns "file" (the input's path/URL), "entry" and the
  scores, one row group per chunk, sorted by (file, entry).

Branches: a model with one output gives `branch_name` ("score"); several outputs give one branch
per output, named as the output, prefixed by `branch_name` + "_" when one is given. An output of
shape (B, 1) is a flat branch, (B, K) a fixed-size array branch of K values.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from rootml import defaults
from rootml._runtime import usable_cores
from rootml.errors import ModelError, RootmlError, where
from rootml.export.preprocessing import Preprocessing, model_feeds

log = logging.getLogger(__name__)

_PARTIAL = ".part"


class _LocalModel:
    """A version (None: the default) of a model of a repository folder, run by onnxruntime in
    this process with that version's own rootml.json."""

    def __init__(self, folder: Path, version: int | None, threads: int):
        from rootml.export.repository import load_model

        self.model = load_model(folder.parent, folder.name, version, threads=threads)
        self.name, self.metadata = self.model.name, self.model.metadata
        self.inputs, self.outputs = self.model.inputs, self.model.outputs
        self.max_batch_size = self.model.max_batch_size
        self.pinned = str(folder / str(self.model.version))  # opens this version again
        self._names = [t.name for t in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self.model.session.run(self._names, feeds)))

    def close(self) -> None:
        pass


class _RemoteModel:
    """A model served over KServe V2 (rootml's server), run through rootml.client."""

    def __init__(self, url: str, token: str | None):
        from rootml.client import Client
        from rootml.export.repository import TensorSpec

        parsed = urlparse(url)
        parts = [p for p in parsed.path.split("/") if p]
        if parts[:2] == ["v2", "models"]:
            parts = parts[2:]
        if not parts or len(parts) not in (1, 3) or (len(parts) == 3 and parts[1] != "versions"):
            raise ModelError(
                f"model URL {url!r}: expected http://host:port/NAME or "
                "http://host:port/v2/models/NAME[/versions/N]"
            )
        self.name, self.version = parts[0], parts[2] if len(parts) == 3 else None
        self.client = Client(f"{parsed.scheme}://{parsed.netloc}", token=token)
        try:
            if self.version is None:
                # Pin the default version, so that the rootml.json read here and every batch
                # scored belong to one version even when the server loads a new one meanwhile.
                served = self.client.model_metadata(self.name)["versions"]
                self.version = str(max(int(v) for v in served))
            signature = self.client.model_metadata(self.name, self.version)
            self.metadata = self.client.model_rootml(self.name, self.version)
            config = self.client.model_config(self.name, self.version)
        except Exception:
            self.client.close()
            raise
        self.inputs = [TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in signature["inputs"]]  # fmt: skip
        self.outputs = [TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in signature["outputs"]]  # fmt: skip
        self.max_batch_size = int(config.get("max_batch_size", 0))
        base = f"{parsed.scheme}://{parsed.netloc}"
        self.pinned = f"{base}/v2/models/{self.name}/versions/{self.version}"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.client.infer(self.name, feeds, self.version)

    def close(self) -> None:
        self.client.close()


def open_model(model: str, threads: int = 0, token: str | None = None) -> Any:
    """A runnable model from "models/NAME" (a model folder of a repository, its default
    version), "models/NAME/N" (version N), both run here, or "http://host:port/NAME[/versions/N]"
    (served). Its `pinned` attribute is the string that opens the same version again, wherever
    the default version moves meanwhile. Raises ModelError, ProtocolError."""
    if model.startswith(("http://", "https://")):
        return _RemoteModel(model, token)
    from rootml.export.repository import list_versions, valid_model_name

    folder, version = Path(model), None
    repo, name = folder.parent.parent, folder.parent.name
    if folder.name.isdigit() and valid_model_name(name):  # a version folder of a repository?
        if int(folder.name) in list_versions(repo, name):
            folder, version = folder.parent, int(folder.name)
    if not folder.is_dir():
        raise ModelError(
            f"model {model!r}: not a model folder (models/NAME), version folder (models/NAME/N) "
            "nor an http:// URL"
        )
    return _LocalModel(folder, version, threads or usable_cores())


def output_paths(
    out: str | Sequence[str], files: Sequence[str]
) -> tuple[list[Path] | None, Path | None]:
    """(ROOT friend file per input or None, parquet file or None) from the `out` destinations:
    "x.root" (one input only), "x.parquet", or a folder (one "<input stem>_scores.root" each).
    Raises RootmlError for a destination that cannot hold the inputs."""
    roots, parquet = None, None
    for dest in [out] if isinstance(out, (str, os.PathLike)) else list(out):
        dest = str(dest)
        if dest.endswith(".parquet"):
            if parquet is not None:
                raise RootmlError("give at most one .parquet destination")
            parquet = Path(dest)
            continue
        if roots is not None:
            raise RootmlError("give at most one ROOT destination (a .root file or a folder)")
        if dest.endswith(".root"):
            if len(files) != 1:
                raise RootmlError(
                    f"--out {dest} takes one input file, not {len(files)}: give a folder"
                )
            roots = [Path(dest)]
            continue
        stems = [posixpath.splitext(posixpath.basename(urlparse(f).path or f))[0] for f in files]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            raise RootmlError(f"inputs share the names {twice}: their scores would overwrite")
        roots = [Path(dest) / f"{stem}_scores.root" for stem in stems]
    inputs = {os.path.realpath(f) for f in files if "://" not in f}
    for path in [*(roots or []), *([parquet] if parquet else [])]:
        if os.path.realpath(path) in inputs:
            raise RootmlError(f"the output {path} is one of the inputs")
    return roots, parquet


def branch_names(outputs: Sequence[str], branch_name: str | None = None) -> dict[str, str]:
    """Output name -> branch/column name (see the module docstring)."""
    if len(outputs) == 1:
        return {outputs[0]: branch_name or "score"}
    return {o: f"{branch_name}_{o}" if branch_name else o for o in outputs}


def check_model(
    runner: Any, branch_name: str | None = None
) -> tuple[Preprocessing, dict[str, str]]:
    """The preprocessing of an opened model (open_model) and its output -> branch names.
    Raises ModelError (no Specs, layout and model disagree) or RootmlError (a name taken)."""
    from rootml.export.folds import FOLD_INPUT, fold_dataset_options

    prep = Preprocessing.from_metadata(runner.metadata, runner.name)
    # A k-fold ensemble also takes each entry's fold, read with its expression (not a feature).
    folds = fold_dataset_options(runner.metadata)
    # the layout makes the model's inputs, or ModelError
    prep.input_values([t for t in runner.inputs if not folds or t.name != FOLD_INPUT])
    names = branch_names([t.name for t in runner.outputs], branch_name)
    if {"file", "entry"} & set(names.values()):
        raise RootmlError("branch names 'file' and 'entry' are taken by the parquet columns")
    return prep, names


def predict(
    model: Any,
    files: Any,
    out: str | Sequence[str],
    *,
    tree: str | None = None,
    out_tree: str | None = None,
    batch_size: int = defaults.BATCH_SIZE,
    branch_name: str | None = None,
    chunk_size: int = defaults.CHUNK_SIZE,
    flush_entries: int = 100_000,
    threads: int = 0,
    token: str | None = None,
    progress: bool | str | None = None,
    rntuple: bool = False,
) -> dict[str, Any]:
    """Score every entry of `files` with `model` and write friend trees and/or parquet.

    model: "models/NAME[/N]" or "http://host:port/NAME[/versions/N]" (see open_model), or a
    model open_model opened (left open); the version's rootml.json needs "specs". A k-fold
    ensemble (rootml.json "folds") gets each entry's fold from its expression: every entry is
    scored by the fold model that did not train on it. files: as RootIterableDataset (paths,
    URLs, globs, .txt lists); tree: the input
    TTree/RNTuple (None: the only one). out: destination(s), see output_paths. batch_size: entries
    per model run (at most the model's max_batch_size). flush_entries: entries written at once.
    Outputs appear complete or not at all (written as "<name>.part", renamed at the end).
    progress: a bar on a terminal, log lines with entries/s and ETA elsewhere (None/True), or
    "bar", "log", False (rootml.progress). rntuple: the ROOT outputs hold an RNTuple, not a TTree.

    Returns {"entries", "files", "outputs", "branches"}. Raises ModelError (no Specs, layout and
    model disagree), FileAccessError/SchemaError (inputs), ProtocolError (server), RootmlError.
    """
    from rootml.datasets import RootIterableDataset
    from rootml.export.folds import fold_dataset_options

    runner = open_model(str(model), threads, token) if isinstance(model, (str, Path)) else model
    try:
        prep, names = check_model(runner, branch_name)
        folds = fold_dataset_options(runner.metadata)
        if runner.max_batch_size > 0:
            batch_size = min(batch_size, runner.max_batch_size)
        ds = RootIterableDataset(
            files, tree, batch_size=batch_size, chunk_size=chunk_size, shuffle=False,
            **{**prep.dataset_options(), **folds},
        )  # fmt: skip
        roots, parquet = output_paths(out, ds.files)
        if parquet is not None:
            _need_pyarrow()
        entries = [0] * len(ds.files)
        for unit in ds.units(0):
            entries[unit.file] += unit.stop - unit.start
        scored = _scored(ds, runner, names, entries, flush_entries, progress)
        tree_name = out_tree or _tree_name(ds.tree)
        written = _write(scored, ds, roots, parquet, tree_name, names, runner.outputs, rntuple)
    finally:
        if runner is not model:
            runner.close()
    return {
        "entries": sum(entries),
        "files": list(ds.files),
        "outputs": [str(p) for p in written],
        "branches": list(names.values()),
    }


def _tree_name(tree: str | None) -> str:
    """The friend tree's name from the input's: a Parquet file has none ("Events"), an HDF5
    group a path ("/jets/table" -> "jets_table")."""
    return (tree or "").strip("/").replace("/", "_") or "Events"


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401  (awkward's parquet writer)
    except ImportError:
        raise RootmlError("parquet output needs pyarrow: pip install pyarrow") from None


def _scored(
    ds: Any,
    runner: Any,
    names: Mapping[str, str],
    entries: Sequence[int],
    flush_entries: int,
    progress: bool | str | None,
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """(file, first entry, branch -> scores) chunks of one file each, in (file, entry) order."""
    from rootml.progress import Progress

    order = _InOrder(entries, flush_entries, ds.files, ds.tree)
    with Progress("scoring", sum(entries), show=progress) as bar:
        for batch in ds:
            block = {k: v.numpy() for k, v in batch.items()}
            outputs = runner.run(model_feeds(block, runner.inputs))
            scores = {names[k]: _column(outputs[k]) for k in names}
            yield from order.add(block["file"], block["entry"], scores)
            bar.update(len(block["entry"]))
    yield from order.finish()


def _column(array: np.ndarray) -> np.ndarray:
    # (B, 1) -> a flat branch; (B, K) stays a fixed-size array of K values.
    return array.reshape(len(array)) if array.ndim == 2 and array.shape[1] == 1 else array


class _InOrder:
    """Scored rows arriving in any order -> chunks of consecutive entries of one file, in
    (file, entry) order, at most `flush` entries each. Rows wait only until the ones before
    them have come; a gap left at the end is an error (entries lost)."""

    def __init__(self, entries: Sequence[int], flush: int, urls: Sequence[str], tree: str):
        self.entries, self.flush, self.urls, self.tree = (
            list(entries),
            max(int(flush), 1),
            urls,
            tree,
        )
        self.file, self.next = 0, 0
        self._skip_done()
        self.waiting: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_start, self.pending_rows = 0, 0

    def add(
        self, file: np.ndarray, entry: np.ndarray, scores: dict[str, np.ndarray]
    ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        order = np.lexsort((entry, file))
        if np.any(np.diff(order) != 1):
            file, entry = file[order], entry[order]
            scores = {k: v[order] for k, v in scores.items()}
        cuts = np.flatnonzero((np.diff(file) != 0) | (np.diff(entry) != 1)) + 1
        bounds = [0, *cuts.tolist(), len(entry)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            self.waiting[(int(file[a]), int(entry[a]))] = {k: v[a:b] for k, v in scores.items()}
        while (self.file, self.next) in self.waiting:
            part = self.waiting.pop((self.file, self.next))
            rows = len(next(iter(part.values())))
            if not self.pending:
                self.pending_start = self.next
            self.pending.append(part)
            self.pending_rows += rows
            self.next += rows
            if self.next > self.entries[self.file]:
                raise RootmlError(f"{where(self.urls[self.file], self.tree)}: entries past the end")
            if self.next == self.entries[self.file] or self.pending_rows >= self.flush:
                yield self._take()
                self._skip_done()

    def finish(self) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        if self.file < len(self.entries) or self.waiting:
            raise RootmlError(
                f"{where(self.urls[min(self.file, len(self.urls) - 1)], self.tree)}: no scores "
                f"from entry {self.next} on; entries were lost"
            )
        return iter(())

    def _take(self) -> tuple[int, int, dict[str, np.ndarray]]:
        parts, self.pending, self.pending_rows = self.pending, [], 0
        joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self.file, self.pending_start, joined

    def _skip_done(self) -> None:
        while self.file < len(self.entries) and self.next >= self.entries[self.file]:
            self.file, self.next = self.file + 1, 0


def _write(
    chunks: Iterator[tuple[int, int, dict[str, np.ndarray]]],
    ds: Any,
    roots: list[Path] | None,
    parquet: Path | None,
    tree: str,
    names: Mapping[str, str],
    outputs: Sequence[Any],
    rntuple: bool = False,
) -> list[Path]:
    """Write the chunks to ROOT friends and/or parquet as "<name>.part", then rename them all."""
    from rootml.predict.writers import FriendTrees, write_parquet

    targets = [*(roots or []), *([parquet] if parquet else [])]
    parts = [p.with_name(p.name + _PARTIAL) for p in targets]
    for path in parts:
        path.parent.mkdir(parents=True, exist_ok=True)
    friends = FriendTrees(parts[: len(roots)], tree, names, outputs, rntuple) if roots else None
    try:

        def written() -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
            for chunk in chunks:
                if friends is not None:
                    friends.write(*chunk)
                yield chunk

        if parquet is not None:
            write_parquet(parts[-1], written(), ds.files, names, outputs)
        else:
            for _ in written():
                pass
        if friends is not None:
            friends.close()
    except BaseException:
        if friends is not None:
            friends.abort()
        for path in parts:
            path.unlink(missing_ok=True)
        raise
    for part, target in zip(parts, targets):
        os.replace(part, target)
    return targets
