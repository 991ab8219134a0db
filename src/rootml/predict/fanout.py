"""`rootml predict` fanned out over a Dask cluster: one task per input file.

```python
from rootml.predict import predict_dask
predict_dask("models/tth", "files.txt", ["scores/", "all.parquet"], scheduler="local:8")
predict_dask("models/tth", files, "scores/", scheduler="tcp://head:8786")  # a running scheduler
predict_dask("models/tth", files, "scores/", scheduler=cluster)  # SLURMCluster, Client, ...
```
Each task runs `rootml.predict.predict` on one file, so a file's friend tree holds the values the
single-process run writes for it (same branches, types, entries). One task per file, because a
friend tree is aligned entry by entry with one input file: a task writes it under a temporary
name in a scratch folder next to the outputs and renames it into place when it is complete. The
parquet file (one for all inputs) is joined by the caller from per-file parts, in input order,
row group by row group, once every file was scored.

Failures: a task that raises is run again up to `retries` times (dask's `retries=`); a task
whose worker dies (killed, out of memory) is run again by the scheduler, up to
`distributed.scheduler.allowed-failures` times (3 by default). When a file still fails, the
run is incomplete: every other file keeps its complete friend tree, the failed files have none,
no parquet file is written, a JSON report names each file not scored with its entry range and
error, and IncompleteOutput is raised (`rootml predict --dask` exits 2). After a run each
destination either holds this run's complete output or does not exist.

The inputs, the model folder and the outputs must be at the same paths on every worker and
here (a shared file system; or root:// and https:// inputs and a served model URL).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rootml import defaults
from rootml.errors import ConfigError, IncompleteOutput, RootmlError
from rootml.predict.run import _need_pyarrow, check_model, open_model, output_paths, predict

log = logging.getLogger(__name__)

REPORT = "rootml-predict-incomplete.json"  # in a destination folder; else "<destination>.incomplete.json"
_SCRATCH = ".rootml-predict-"  # + run id: the temporary outputs of one run's tasks

# Per worker process: the model of the current run, opened once for all the files it scores.
_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()


def predict_dask(
    model: str,
    files: Any,
    out: str | Sequence[str],
    *,
    scheduler: Any = "local",
    retries: int = 2,
    tree: str | None = None,
    out_tree: str | None = None,
    batch_size: int = defaults.BATCH_SIZE,
    branch_name: str | None = None,
    chunk_size: int = defaults.CHUNK_SIZE,
    flush_entries: int = 100_000,
    threads: int = 1,
    token: str | None = None,
    progress: bool | str | None = None,
    rntuple: bool = False,
) -> dict[str, Any]:
    """Score every entry of `files` with `model` on a Dask cluster, one task per file, and
    write what `predict` writes (friend trees and/or one parquet file).

    scheduler: "local" or "local:N" (a LocalCluster here: N worker processes, default one per
    core, one thread each), a scheduler address ("tcp://host:8786"), a scheduler file
    ("scheduler.json"), a distributed.Client (used as it is, not closed) or a cluster object
    (LocalCluster, dask-jobqueue's SLURMCluster/HTCondorCluster). retries: extra attempts of a
    task that raised. threads: onnxruntime threads per task (one task per worker thread runs at
    once). The model is opened here first (a bad model fails before any task) and its version
    pinned, so every task scores with the same version. Other arguments: as `predict`.

    Returns {"entries", "files", "outputs", "branches"} as `predict`. Raises IncompleteOutput
    (files not scored, see the module docstring), ModelError, ConfigError, RootmlError.
    """
    from rootml.datasets._files import resolve_files

    if not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be a whole number >= 0, not {retries!r}")
    urls, _ = resolve_files(files)
    roots, parquet = output_paths(out, urls)
    if parquet is not None:
        _need_pyarrow()
    runner = open_model(model, threads, token)
    try:
        _, names = check_model(runner, branch_name)
        pinned = runner.pinned
    finally:
        runner.close()
    run = uuid.uuid4().hex
    scratch = (roots[0] if roots else parquet).parent / f"{_SCRATCH}{run}"
    options = {
        "tree": tree, "out_tree": out_tree, "batch_size": batch_size, "branch_name": branch_name,
        "chunk_size": chunk_size, "flush_entries": flush_entries, "rntuple": rntuple,
    }  # fmt: skip
    parts = [scratch / f"{i:06d}.parquet" for i in range(len(urls))] if parquet else None
    try:
        with _connect(scheduler) as client:
            futures = client.map(
                _score_file, urls, roots or [None] * len(urls), parts or [None] * len(urls),
                key=[f"rootml-predict-{run[:8]}-{i}" for i in range(len(urls))],
                retries=retries, pure=False,
                run=run, model=pinned, threads=threads, token=token, scratch=scratch,
                options=options,
            )  # fmt: skip
            outcomes = _wait(client, futures, progress)
        failed = [_not_scored(url, tree, err) for url, err in zip(urls, outcomes) if _err(err)]
        if not failed and parquet is not None:
            _join_parquet(parts, parquet)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = _report_path(out)
    if failed:
        _incomplete(urls, outcomes, failed, roots, parquet, report)
    report.unlink(missing_ok=True)  # a report of an earlier incomplete run into these outputs
    return {
        "entries": sum(o["entries"] for o in outcomes),
        "files": urls,
        "outputs": [str(p) for p in [*(roots or []), *([parquet] if parquet else [])]],
        "branches": list(names.values()),
    }


def _err(outcome: Any) -> bool:
    return isinstance(outcome, BaseException)


def _score_file(
    url: str,
    friend: Path | None,
    part: Path | None,
    *,
    run: str,
    model: str,
    threads: int,
    token: str | None,
    scratch: Path,
    options: dict[str, Any],
) -> dict[str, int]:
    """The task: one file -> its friend tree (renamed to `friend` when complete) and/or its
    parquet part. Each attempt writes into a folder of its own, so a lost worker's leftovers
    and an attempt still running elsewhere never mix with another attempt's files."""
    attempt = scratch / uuid.uuid4().hex
    attempt.mkdir(parents=True)
    moves = []  # (temporary, final); the part first: a friend in place means its part is too
    if part is not None:
        moves.append((attempt / "part.parquet", part))
    if friend is not None:
        moves.append((attempt / friend.name, friend))
    runner = _worker_model(run, model, threads, token)
    try:
        summary = predict(runner, [url], [str(t) for t, _ in moves], progress=False, **options)
        for temp, final in moves:
            os.replace(temp, final)
    finally:
        shutil.rmtree(attempt, ignore_errors=True)
    return {"entries": summary["entries"]}


def _worker_model(run: str, model: str, threads: int, token: str | None) -> Any:
    """The model of run `run`, opened once per worker process and shared by its threads
    (onnxruntime sessions and the V2 client take concurrent calls)."""
    key = (run, model, threads, token)
    with _MODELS_LOCK:
        if key not in _MODELS:
            while len(_MODELS) >= 2:  # models of earlier runs: dropped (closed when collected)
                _MODELS.pop(next(iter(_MODELS)))
            _MODELS[key] = open_model(model, threads, token)
        return _MODELS[key]


@contextlib.contextmanager
def _connect(scheduler: Any) -> Iterator[Any]:
    """A distributed.Client for `scheduler` (see predict_dask); what is made here is closed."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise RootmlError(
            "scoring on Dask needs dask.distributed: pip install 'rootml[dask]'"
        ) from None
    if isinstance(scheduler, Client):
        yield scheduler
        return
    if not isinstance(scheduler, str):  # a cluster object
        with Client(scheduler) as client:
            yield client
        return
    if scheduler == "local" or scheduler.startswith("local:"):
        n = _local_workers(scheduler)
        with (
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    where = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
    try:
        client = Client(**where)
    except (OSError, TimeoutError, ValueError) as err:
        raise RootmlError(f"cannot reach the Dask scheduler {scheduler}: {err}") from err
    with client:
        yield client


def _local_workers(scheduler: str) -> int:
    count = scheduler.partition(":")[2]
    if not count:
        return len(os.sched_getaffinity(0))
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"--dask {scheduler!r}: give local or local:N with N >= 1 workers")
    return int(count)


def _wait(client: Any, futures: list[Any], progress: bool | str | None) -> list[Any]:
    """Each task's result, or its exception once its attempts are spent."""
    from distributed import as_completed

    from rootml.progress import Progress

    try:
        with Progress("scoring", len(futures), "files", show=progress) as bar:
            for _ in as_completed(futures):
                bar.update(1)
        return [_outcome(f) for f in futures]
    finally:
        client.cancel(futures)  # nothing left running when interrupted


def _outcome(future: Any) -> Any:
    if future.status == "finished":
        return future.result()
    if future.status == "error":
        return future.exception()
    return RootmlError(f"the task ended {future.status} (the cluster lost it)")


def _not_scored(url: str, tree: str | None, err: BaseException) -> dict[str, Any]:
    """A file not scored: its URL, its entry range (None when it cannot be read here) and why."""
    from distributed.scheduler import KilledWorker

    from rootml.datasets._metadata import read_metadata

    if isinstance(err, KilledWorker):
        reason = f"its workers died while scoring it ({err})"
    else:
        reason = f"{type(err).__name__}: {err}"
    try:
        entries = [0, read_metadata([url], tree, retries=0)[0].entries]
    except Exception:  # unreadable here too: the report says the whole file, count unknown
        entries = None
    return {"file": url, "entries": entries, "error": reason}


def _incomplete(
    urls: Sequence[str],
    outcomes: Sequence[Any],
    failed: list[dict[str, Any]],
    roots: list[Path] | None,
    parquet: Path | None,
    report: Path,
) -> None:
    """Remove what this run did not write (so no older output passes for this run's), write the
    report, raise IncompleteOutput."""
    written = [str(p) for p, o in zip(roots or [], outcomes) if not _err(o)]
    stale = [p for p, o in zip(roots or [], outcomes) if _err(o)] + ([parquet] if parquet else [])
    for path in stale:
        path.unlink(missing_ok=True)
    content = {
        "complete": False,
        "not_scored": failed,
        "scored": [
            {"file": u, "entries": [0, o["entries"]]} for u, o in zip(urls, outcomes) if not _err(o)
        ],  # fmt: skip
        "outputs": written,
        "not_written": [str(p) for p in stale],
    }
    temp = report.with_name(report.name + ".part")
    report.parent.mkdir(parents=True, exist_ok=True)
    temp.write_text(json.dumps(content, indent=1))
    os.replace(temp, report)
    shown = "; ".join(
        f"{f['file']} (entries {'{}-{}'.format(*f['entries']) if f['entries'] else 'all'}: "
        f"{f['error']})"
        for f in failed[:3]
    )
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    raise IncompleteOutput(
        f"{len(failed)} of {len(urls)} files not scored, no output written for them"
        f"{' nor the parquet file' if parquet else ''} (report: {report}): {shown}{more}",
        failed=failed,
        outputs=written,
        report=str(report),
    )


def _report_path(out: str | Sequence[str]) -> Path:
    """Where an incomplete run's report goes: in the ROOT destination folder, else next to the
    first destination file."""
    dests = [str(out)] if isinstance(out, (str, os.PathLike)) else [str(d) for d in out]
    dests.sort(key=lambda d: d.endswith(".parquet"))  # a ROOT destination first
    first = dests[0]
    if first.endswith((".root", ".parquet")):
        return Path(first + ".incomplete.json")
    return Path(first) / REPORT


def _join_parquet(parts: Sequence[Path], target: Path) -> None:
    """Per-file parquet parts -> one file, row group by row group, so memory holds one row group
    (at most flush_entries rows); written as "<target>.part", then renamed."""
    import awkward as ak

    def row_groups() -> Iterator[Any]:
        for part in parts:
            for i in range(ak.metadata_from_parquet(part)["num_row_groups"]):
                table = ak.from_parquet(part, row_groups=[i])
                if len(table):
                    yield table

    temp = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        groups = row_groups()
        first = next(groups, None)
        if first is None:  # no entries at all: the (empty) table of the first file, its schema
            ak.to_parquet(ak.from_parquet(parts[0]), temp)
        else:
            ak.to_parquet_row_groups(itertools.chain([first], groups), temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    os.replace(temp, target)
