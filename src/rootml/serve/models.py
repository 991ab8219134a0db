"""Model management: which versions of which models are loaded, and running them.

Loading builds the new set of versions of a model off to the side (sessions are created in a
thread, so serving goes on) and then replaces the old set in one assignment: a request either got
the old version object, which finishes its run, or the new one. Never a half-loaded model.

Each loaded version keeps its own rootml.json (`ServedVersion.metadata`) for the layers that turn
raw physics columns into model inputs. Versions load one by one: a version that fails (a graph
that does not fit config.pbtxt, a broken rootml.json) is UNAVAILABLE with its reason while the
others serve; requests for it, or for the default version when it is that one, get
ModelNotReady.

`poll` brings the served models in line with the repository (Triton's poll mode): models that
appeared or changed are loaded, models removed are unloaded. Versions are written into the
repository by renaming a finished folder (rootml.export), so a poll never sees half a version.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rootml.errors import (
    BadRequest,
    ModelError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    ProtocolError,
)
from rootml.export import repository as repo_mod
from rootml.export.execution import check_device, provider_of
from rootml.export.model_config import batching_settings, model_file_name, select_versions
from rootml.serve.batching import DynamicBatcher
from rootml.serve.metrics import ServeMetrics
from rootml.serve.upload import check_model_files, read_upload

log = logging.getLogger(__name__)


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class ServedVersion:
    """One loaded version of a model: its sessions, signature, metadata and optional batcher.

    Runs take the version's sessions (one per GPU instance of config.pbtxt's instance_group, or
    one on the CPU) in turn."""

    def __init__(self, model: repo_mod.LoadedModel, batcher: DynamicBatcher | None = None):
        self.model = model
        self.batcher = batcher
        self.sessions = model.sessions
        # next() of itertools.cycle is one C call, safe from the run threads without a lock.
        self._turn = itertools.cycle(model.sessions).__next__
        self.output_names = [t.name for t in model.outputs]
        self.max_batch_size = model.max_batch_size  # read on every request
        # Seconds per run by size class of the batch (rows.bit_length()): a moving average of
        # the runs measured, which decides whether a run is cheap enough to run inline.
        self.run_seconds: dict[int, float] = {}

    def note_run(self, rows: int, seconds: float) -> None:
        """Record that a run of `rows` rows took `seconds` (thread-safe: one dict store)."""
        key = rows.bit_length()
        last = self.run_seconds.get(key)
        self.run_seconds[key] = seconds if last is None else last + 0.25 * (seconds - last)

    name = property(lambda self: self.model.name)
    version = property(lambda self: self.model.version)
    inputs = property(lambda self: self.model.inputs)
    outputs = property(lambda self: self.model.outputs)
    metadata = property(lambda self: self.model.metadata)

    def placement(self) -> dict[str, str | int]:
        """Where the version runs, as V2 parameters: execution_provider and device of its
        sessions (comma-separated when they differ, in session order) and instances (sessions)."""
        devices = self.model.devices
        providers = [provider_of(d) for d in devices]
        return {
            "execution_provider": ",".join(dict.fromkeys(providers)),
            "device": ",".join(dict.fromkeys(devices)),
            "instances": len(devices),
        }

    def rows(self, feeds: dict[str, np.ndarray]) -> int:
        """The rows (batch entries) of a request's `feeds`: 1 for a model without a batch dim."""
        return next(iter(feeds.values())).shape[0] if feeds and self.max_batch_size > 0 else 1

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a session on `feeds` (input name -> array); blocking, thread-safe."""
        return dict(zip(self.output_names, self._turn().run(self.output_names, feeds)))


class ModelManager:
    """The models of one repository as served: load, unload, upload, look up, run.

    At most `run_slots` onnxruntime runs are in flight, each with `threads_per_run` intra-op
    threads: run_slots x threads_per_run should not exceed the cores, so runs never fight over
    them. Beyond `max_queue` waiting requests, requests are refused (Overloaded). A run of an
    unbatched version measured to take at most `inline_run_s` runs on the event loop instead.
    `device` ("auto", "cpu", "cuda", "cuda:N") places the versions whose config.pbtxt does not
    say where (rootml.export.execution).
    """

    def __init__(
        self,
        repo: str | Path,
        *,
        run_slots: int = 1,
        threads_per_run: int = 1,
        max_queue: int = 1024,
        metrics: ServeMetrics | None = None,
        inline_run_s: float = 100e-6,
        device: str = "auto",
    ):
        self.repo = Path(repo)
        self.device = check_device(device)
        if not self.repo.is_dir():
            raise ModelError(f"model repository {self.repo} is not a directory")
        self.run_slots, self.threads_per_run, self.max_queue = run_slots, threads_per_run, max_queue
        self.inline_run_s = inline_run_s
        # What a run costs: the CPU time of the thread that ran it when onnxruntime runs it in
        # that thread alone. Wall time in a run thread also counts waiting for a core and for the
        # GIL (the event loop holds it), and on a busy server would keep a 20 us run out of the
        # loop for good.
        self._run_clock = time.thread_time if threads_per_run == 1 else time.perf_counter
        self.metrics = metrics or ServeMetrics()
        self.executor = ThreadPoolExecutor(run_slots, thread_name_prefix="rootml-run")
        self._models: dict[str, dict[int, ServedVersion]] = {}
        self._status: dict[str, tuple[str, str]] = {}
        # Per loaded model: versions that failed -> reason, the default version, and the
        # fingerprint of the files it was loaded from (what poll compares).
        self._failed: dict[str, dict[int, str]] = {}
        self._default: dict[str, int] = {}
        self._fingerprints: dict[str, tuple] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Sessions by (name, version), reused while the model file is unchanged; loads of different
        # models run in threads at once, hence the lock.
        self._cache: dict[tuple[str, int], tuple[tuple, repo_mod.LoadedModel]] = {}
        self._cache_lock = threading.Lock()
        self._waiting = 0

    # Loading -------------------------------------------------------------------------------
    def _load_versions(
        self, name: str
    ) -> tuple[dict[int, repo_mod.LoadedModel], dict[int, str], int]:
        """(versions loaded, versions failed -> reason, default version) of model `name`."""
        folder = repo_mod.model_dir(self.repo, name)
        config = repo_mod.read_config(folder)
        filename = model_file_name(config)
        wanted = select_versions(repo_mod.list_versions(self.repo, name), config)
        if not wanted:
            raise ModelError(f"model {name!r}: no version to load in {folder}")
        loaded, failed, keys = {}, {}, {}
        for version in wanted:
            try:
                info = (folder / str(version) / filename).stat()
                key = (info.st_mtime_ns, info.st_size, info.st_ino)
                with self._cache_lock:
                    cached = self._cache.get((name, version))
                # An unchanged file keeps its session; config and rootml.json are read anew.
                reuse = cached[1] if cached is not None and cached[0] == key else None
                loaded[version] = repo_mod.load_model(
                    self.repo,
                    name,
                    version,
                    threads=self.threads_per_run,
                    cached=reuse,
                    device=self.device,
                )
                keys[version] = key
            except (ModelError, OSError) as err:
                failed[version] = str(err)
                log.error("model %s version %d not loaded: %s", name, version, err)
        with self._cache_lock:
            for stale in [k for k in self._cache if k[0] == name]:
                del self._cache[stale]
            self._cache.update({(name, v): (keys[v], m) for v, m in loaded.items()})
        return loaded, failed, max(wanted)

    def _serve(self, model: repo_mod.LoadedModel) -> ServedVersion:
        served = ServedVersion(model)
        settings = batching_settings(model.config, model.metadata)
        if settings is not None:
            delay, queue, preferred = settings
            served.batcher = DynamicBatcher(
                served.run,
                self.executor,
                model.max_batch_size,
                delay,
                queue or self.max_queue,
                slots=self.run_slots,
                observe=lambda rows, waits: self.metrics.observe_run(
                    model.name, model.version, rows, waits
                ),
                preferred_batch_size=preferred,
                executed=lambda *run: self.metrics.observe_execution(
                    model.name, model.version, *run
                ),
            )
        return served

    async def load(self, name: str) -> None:
        """(Re)load model `name` from the repository, then swap it in; the old set serves until then.

        Raises BadRequest for an invalid name, ModelNotFound for a model not in the repository,
        ModelError if no version loads (the versions already loaded, if any, keep serving), or
        if some did not (the others are swapped in and serve).
        """
        self._check_name(name)
        if not self._exists(name):
            raise ModelNotFound(f"model {name!r} is not in the repository")
        async with self._locks.setdefault(name, asyncio.Lock()):
            self._fingerprints[name] = await asyncio.to_thread(self.fingerprint, name)
            if name not in self._models:
                self._status[name] = ("LOADING", "")
            try:
                loaded, failed, default = await asyncio.to_thread(self._load_versions, name)
                if not loaded:
                    raise ModelError(
                        "; ".join(f"version {v}: {reason}" for v, reason in failed.items())
                    )
                new = {v: self._serve(m) for v, m in loaded.items()}
            except (ModelError, OSError) as err:
                if name not in self._models:
                    self._status[name] = ("UNAVAILABLE", str(err))
                raise ModelError(str(err)) from err
            old, self._models[name] = self._models.get(name, {}), new
            self._failed[name], self._default[name] = failed, default
            self._status.pop(name, None)
            log.info("model %s: serving versions %s", name, sorted(new))
            await self._retire(old)
        if failed:
            raise ModelError(
                f"model {name!r}: serving versions {sorted(new)}; "
                + "; ".join(f"version {v} failed: {reason}" for v, reason in failed.items())
            )

    async def unload(self, name: str) -> None:
        """Stop serving model `name` (requests already queued finish).

        Raises BadRequest for an invalid name, ModelNotFound for an unknown model."""
        self._check_name(name)
        if name not in self._models and not self._exists(name):
            raise ModelNotFound(f"model {name!r} is not in the repository")
        async with self._locks.setdefault(name, asyncio.Lock()):
            old = self._models.pop(name, {})
            self._failed.pop(name, None)
            self._status[name] = ("UNAVAILABLE", "unloaded")
            with self._cache_lock:
                for key in [k for k in self._cache if k[0] == name]:
                    del self._cache[key]
            await self._retire(old)

    async def upload(self, name: str, body: bytes, max_bytes: int) -> int:
        """Add an uploaded model (see serve.upload) as a new version of `name`, then serve it.

        The upload is unpacked and checked whole in a thread (archive, ONNX opened by
        onnxruntime, rootml.json against the graph, config.pbtxt, the model's signature) before
        anything is written, so a refused upload leaves the repository as it was. Returns the
        new version. Raises BadRequest, BodyTooLarge, ModelError.
        """
        self._check_name(name)

        def add() -> int:
            files = read_upload(body, max_bytes)
            check_model_files(name, files)
            return repo_mod.add_onnx_model(
                self.repo, name, files.onnx, files.metadata, config=files.config
            )

        async with self._locks.setdefault(name, asyncio.Lock()):
            version = await asyncio.to_thread(add)
        await self.load(name)
        return version

    async def load_all(self) -> None:
        """Load every model of the repository; a model that fails is logged and marked UNAVAILABLE."""
        for name in repo_mod.list_models(self.repo):
            try:
                await self.load(name)
            except (ModelError, ProtocolError) as err:
                log.warning("model %s not (fully) loaded: %s", name, err)

    def fingerprint(self, name: str) -> tuple:
        """The state of the files loading model `name` reads (config.pbtxt, each version's
        model file and rootml.json, a model-level rootml.json): it changes when any of them is
        added, removed or replaced."""
        folder = repo_mod.model_dir(self.repo, name)
        paths = [folder / repo_mod.CONFIG_FILE, folder / repo_mod.METADATA_FILE]
        try:
            filename = repo_mod.model_file(folder)
        except ModelError:  # loading reports it; the config's own state is in the fingerprint
            filename = repo_mod.MODEL_FILE
        for version in repo_mod.list_versions(self.repo, name):
            paths += [folder / str(version) / f for f in (filename, repo_mod.METADATA_FILE)]
        return tuple((str(path), _file_state(path)) for path in paths)

    async def poll(self) -> None:
        """One poll of the repository: load the models that appeared or changed since they were
        last loaded, unload the models whose folder is gone. Failures are logged; a model that
        failed is tried again once it changes."""
        try:
            names = await asyncio.to_thread(repo_mod.list_models, self.repo)
        except (ModelError, OSError) as err:
            log.warning("repository poll skipped: %s", err)
            return
        for name in sorted((set(self._models) | set(self._fingerprints)) - set(names)):
            log.info("model %s left the repository: unloading it", name)
            async with self._locks.setdefault(name, asyncio.Lock()):
                await self._retire(self._models.pop(name, {}))
                for table in (self._failed, self._default, self._fingerprints, self._status):
                    table.pop(name, None)
        for name in names:
            try:
                if await asyncio.to_thread(self.fingerprint, name) != self._fingerprints.get(name):
                    await self.load(name)
            except (ModelError, ProtocolError, OSError) as err:
                log.warning("model %s not (fully) loaded: %s", name, err)

    async def close(self) -> None:
        """Unload everything and stop the run threads."""
        for name in list(self._models):
            await self._retire(self._models.pop(name))
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _retire(self, versions: dict[int, ServedVersion]) -> None:
        for served in versions.values():
            if served.batcher is not None:
                await served.batcher.close()

    def _exists(self, name: str) -> bool:
        try:
            return repo_mod.model_dir(self.repo, name).is_dir()
        except (ModelError, OSError):
            return False

    @staticmethod
    def _check_name(name: str) -> None:
        try:
            repo_mod.check_model_name(name)
        except ModelError as err:
            raise BadRequest(str(err)) from None

    # Serving -------------------------------------------------------------------------------
    def get(self, name: str, version: str | int | None = None) -> ServedVersion:
        """The loaded version `version` (default: the model's default, its highest) of `name`.

        Raises BadRequest for an invalid name, ModelNotFound for an unknown model or version,
        ModelNotReady for a model not (yet) loaded or a version that failed to load.
        """
        versions = self._models.get(name)
        if versions is None:
            self._check_name(name)
            if self._exists(name):
                state, reason = self._status.get(name, ("UNAVAILABLE", "not loaded"))
                raise ModelNotReady(f"model {name!r} is not ready ({state.lower()}: {reason})")
            raise ModelNotFound(f"unknown model {name!r}")
        if version is None or version == "":
            number = self._default.get(name) or max(versions)
        else:
            try:
                number = int(version)
            except ValueError:
                number = None
        served = versions.get(number)
        if served is not None:
            return served
        failed = self._failed.get(name, {})
        if number in failed:
            raise ModelNotReady(
                f"version {number} of model {name!r} is unavailable: {failed[number]}"
            )
        raise ModelNotFound(
            f"model {name!r} has no loaded version {version!r} (versions: {sorted(versions)})"
        )

    def loaded(self) -> dict[str, list[int]]:
        """Loaded models and their versions."""
        return {name: sorted(versions) for name, versions in self._models.items()}

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository index: one entry per loaded version, one per model not loaded."""
        names = sorted(set(repo_mod.list_models(self.repo)) | set(self._models) | set(self._status))
        entries = []
        for name in names:
            if name in self._models:
                failed = {} if ready_only else self._failed.get(name, {})
                states = {v: ("READY", "") for v in self._models[name]}
                states.update({v: ("UNAVAILABLE", reason) for v, reason in failed.items()})
                entries += [
                    {"name": name, "version": str(v), "state": state, "reason": reason}
                    for v, (state, reason) in sorted(states.items())
                ]
            elif not ready_only:
                state, reason = self._status.get(name, ("UNAVAILABLE", "not loaded"))
                entries.append({"name": name, "version": "", "state": state, "reason": reason})
        return entries

    async def infer(
        self,
        served: ServedVersion,
        feeds: dict[str, np.ndarray],
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one request through the batcher of `served`, or directly when it has none.

        A version retired by a reload after this request got it still answers the request, on
        its own session and unbatched: the request never sees the swap. A run that earlier runs
        of its size class show to take at most `inline_run_s` runs right here, on the event loop:
        handing it to a run thread and back costs more CPU (~100 us) than the run. Otherwise it
        waits at most `timeout` s for a run thread. Raises Overloaded when too many requests
        wait, asyncio.TimeoutError past `timeout`.
        """
        if served.batcher is not None and not served.batcher.closed:
            return await asyncio.wait_for(served.batcher.submit(feeds), timeout)
        rows = served.rows(feeds)
        cost = served.run_seconds.get(rows.bit_length())
        if cost is not None and cost <= self.inline_run_s:
            return self._run_counted(served, feeds, rows, 0.0)
        if self._waiting >= self.max_queue + self.run_slots:
            raise Overloaded(f"too many requests waiting ({self._waiting}); retry later")
        queued = time.perf_counter()

        def job() -> dict[str, np.ndarray]:
            return self._run_counted(served, feeds, rows, time.perf_counter() - queued)

        self._waiting += 1
        try:
            run = asyncio.get_running_loop().run_in_executor(self.executor, job)
            return await asyncio.wait_for(run, timeout)
        finally:
            self._waiting -= 1

    def _run_counted(
        self, served: ServedVersion, feeds: dict[str, np.ndarray], rows: int, waited: float
    ) -> dict[str, np.ndarray]:
        """One unbatched run of `served` that waited `waited` s, counted in the metrics; its
        cost (see infer) noted."""
        self.metrics.observe_run(served.name, served.version, rows, [waited])
        started, wall = self._run_clock(), time.perf_counter()
        outputs = served.run(feeds)
        seconds = time.perf_counter() - wall
        served.note_run(rows, self._run_clock() - started)
        self.metrics.observe_execution(served.name, served.version, rows, [waited], seconds)
        return outputs
