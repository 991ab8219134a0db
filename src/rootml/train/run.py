"""A whole training run from MLaaS4HEP-style inputs: files, labels, model.py, params.json."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rootml._runtime import distributed, rank_world
from rootml.datasets import Selection, resolve_files
from rootml.errors import ConfigError
from rootml.runfolder import (
    BEST_FILE,
    CHECKPOINT_FILE,
    MODEL_FILE,
    PARAMS_FILE,
    SPECS_FILE,
    SUMMARY_FILE,
    CheckpointKey,
    load_checkpoint,
)
from rootml.train.distributed import init_distributed, resolve_device
from rootml.train.fit import evaluate, fit
from rootml.train.folder import check_run_folder, clear_run_folder, finished_summary
from rootml.train.inputs import (
    RunData,
    label_names,
    make_objective,
    make_schedule,
    reserved,
    run_data,
)
from rootml.train.model import build_model, freeze, init_from, model_arguments
from rootml.train.params import load_params
from rootml.train.schedule import EarlyStopping
from rootml.train.splits import fold_expression, n_folds_of
from rootml.train.tracking import Tracking
from rootml.transforms import Specs

log = logging.getLogger(__name__)

FOLDS_FILE = "folds.json"  # in a k-fold run's folder: expression, number of folds, fold folders


def run_from_params(
    files: Any,
    labels: Any,
    model_file: str | os.PathLike,
    params: str | os.PathLike | dict[str, Any] | None,
    out_dir: str | os.PathLike,
    resume: bool | str = False,
    overwrite: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train the model of `model_file` on `files` (list, glob, files.txt) with `labels` (list or
    labels.txt, one per file) as MLaaS4HEP does, writing everything into `out_dir`:
    params.json, model.py, specs.json, checkpoint.pt, checkpoints/, history.csv/json, plots/,
    summary.json (and debug/ with params "debug_entries", tensorboard/ or mlflow.json with
    params "log").

    params: params.json or a dict (rootml.train.params: MLaaS4HEP keys and rootml's own);
    overrides (e.g. device="cpu", epochs=3) win over it. Entries are split by
    rootml.train.splits: the last `val_fraction` of each file's selected entries validates, the
    `test_fraction` before it is the test set, scored once after training (with the best epoch
    when early stopping kept one) into summary.json "test" and plots/test/. The Specs (pad
    lengths, the statistics of `normalize`, the reweighting histograms of reweight_vars) are
    fitted on the training entries only, and on resume read back from out_dir/specs.json.
    Under torchrun every rank calls this; rank 0 writes.

    k-fold cross validation (params "folds", e.g. "event % 5"): fold k is a whole run in
    out_dir/fold_k, trained and validated on the entries of the other folds, tested on its own;
    params "fold" trains one fold, else every fold in turn. Every fold's Specs are the same,
    fitted on the training entries of all folds (the features' statistics use no labels; the
    reweighting histograms, when asked for, do), so the fold models take the same inputs.
    out_dir/folds.json names the expression and the folds,
    out_dir/summary.json holds each fold's summary and the mean and spread of their test
    metrics. `rootml export out_dir` makes the fold models one ensemble (rootml.export.folds).

    A run folder that already holds a run is refused unless `resume` (continue it up to
    `epochs`; "auto": only if it holds one, else start it) or `overwrite` (its checkpoints,
    history, plots and Specs are deleted first). When a resumed run already has `epochs`
    epochs (or stopped early), nothing is trained and its summary is returned with
    "new_epochs" 0; fewer `epochs` than it has is a ConfigError.

    Before training, the model is built and run on a zero batch of the dataset's shape on the
    CPU, so a model that does not fit the inputs is refused at once (ModelError naming the model
    file, its arguments and torch's message). Files that all have one label (no labels.txt and
    no label_branch) are refused for classification: the model would learn one class.

    Returns the summary (also in summary.json): "new_epochs" trained by this call, and per
    epoch "epoch_seconds" and "epoch_events" (training + validation entries). Raises what
    RootIterableDataset, fit_specs and fit raise; ConfigError for parameters that cannot work.
    """
    begin = time.perf_counter()
    params = load_params(params, **overrides)
    if params["verbose"]:
        logging.getLogger("rootml").setLevel(
            logging.DEBUG if params["verbose"] > 1 else logging.INFO
        )
    out = Path(out_dir)
    device = resolve_device(params["device"])
    started = not distributed()
    rank, world = init_distributed(device)
    try:
        if params["folds"]:
            summary = _run_folds(files, labels, model_file, params, out, resume, overwrite, rank)
        else:
            summary = _run(files, labels, model_file, params, out, resume, overwrite, begin)
        if started and world > 1:
            # Every rank done (rank 0 writes last) before any tears the group down: a gloo rank
            # destroying its group while another still runs aborted now and then at exit
            # ("terminate called without an active exception", SIGABRT).
            torch.distributed.barrier()
        return summary
    finally:
        if started and world > 1:
            torch.distributed.destroy_process_group()


def _run_folds(files, labels, model_file, params, out: Path, resume, overwrite, rank) -> dict:
    """Every fold of params "folds" (or the one of "fold") as a run in out/fold_k."""
    n = n_folds_of(params["folds"], params["n_folds"])
    if params["test_fraction"]:
        raise ConfigError("k-fold runs test each fold on its own entries: give test_fraction 0")
    if params["fold"] is not None and params["fold"] >= n:
        raise ConfigError(f"fold must be in 0..{n - 1} for {n} folds, not {params['fold']}")
    record = {"folds": params["folds"], "n_folds": n, "expression": fold_expression(params["folds"], n),
              "runs": [f"fold_{k}" for k in range(n)]}  # fmt: skip
    if (out / FOLDS_FILE).is_file():
        held = json.loads((out / FOLDS_FILE).read_text())
        if (held["folds"], held["n_folds"]) != (record["folds"], n):
            if not overwrite:
                raise ConfigError(
                    f"{out} holds the folds {held['folds']!r} ({held['n_folds']}), not "
                    f"{params['folds']!r} ({n}): give --overwrite or another --out"
                )
            for k in range(held["n_folds"]) if rank == 0 else ():  # other folds: all stale
                clear_run_folder(out / f"fold_{k}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / FOLDS_FILE).write_text(json.dumps(record, indent=1))
    if "mlflow" in (params["log"] or []) and not (params["tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI")):  # fmt: skip
        params = {
            **params,
            "tracking_uri": (out / "mlruns").resolve().as_uri(),
        }  # one store, a run per fold
    chosen = [params["fold"]] if params["fold"] is not None else range(n)
    summaries = {}
    for k in chosen:
        begin = time.perf_counter()
        folder = out / f"fold_{k}"
        summaries[k] = _run(files, labels, model_file, params, folder, resume, overwrite, begin, k)
    summary = folds_summary(out, n)
    if rank == 0:
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=_json_safe))
    return summaries[chosen[-1]] if params["fold"] is not None else summary


def folds_summary(out: Path, n: int) -> dict[str, Any]:
    """The folds' summaries (those trained so far) and, per test metric, the mean over folds and
    the standard deviation of the fold values."""
    folds = {}
    for k in range(n):
        path = out / f"fold_{k}" / SUMMARY_FILE
        if path.is_file():
            folds[k] = json.loads(path.read_text())
    tests = [s["test"] for s in folds.values() if s.get("test")]
    keys = [k for k in (tests[0] if tests else {}) if all(k in t for t in tests)]
    combined = {
        key: {"mean": float(np.mean(values)), "std": float(np.std(values)), "folds": values}
        for key in keys
        if (values := [t[key] for t in tests]) and all(isinstance(v, (int, float)) for v in values)
    }
    return {"n_folds": n, "folds_done": sorted(folds), "test": combined,
            "folds": {str(k): s for k, s in folds.items()}}  # fmt: skip


def _run(files, labels, model_file, params, out: Path, resume, overwrite, begin, fold=None):
    """One run (one fold of a k-fold run when `fold` is given) into `out`; its summary."""
    rank, world = rank_world()
    done = check_run_folder(out, resume, overwrite, params["epochs"])
    if world > 1:  # every rank reads the folder before rank 0 changes it
        torch.distributed.barrier()
    if done == params["epochs"]:
        return finished_summary(out, done)
    if overwrite and rank == 0:
        clear_run_folder(out)
    selection, labels = _selection(files, labels, params)
    torch.manual_seed(params["seed"])
    data = run_data(selection, labels, params, out if done is not None else None, fold)
    model_args = model_arguments(data.train)
    classes = None if params["label_branch"] or data.regression else max(data.train.file_labels) + 1  # fmt: skip
    objective = make_objective(params, data)
    outputs = getattr(objective, "outputs", None)
    model = build_model(model_file, model_args, data.train, classes, outputs)
    if done is None and params["init_from"]:
        init_from(model, params["init_from"])
    freeze(model, params["freeze"])
    record = {**params, "files": data.train.files, "labels": data.train.file_labels, "fold": fold}
    if rank == 0 and done is None:
        _write_inputs(out, model_file, data.specs, record)
    extra = _checkpoint_extra(params, data, model_args, record, objective)
    tracking = None
    if rank == 0 and params["log"]:
        steps = sum(row.get("steps", 0) for row in (_history(out) if done else []))
        tracking = Tracking(params["log"], out, record, steps, out.name if fold is not None else None)  # fmt: skip
    history = fit(
        model, data.train, data.val, out_dir=out, epochs=params["epochs"], lr=params["lr"],
        device=params["device"], num_workers=params["num_workers"], amp=params["amp"],
        resume=done is not None, checkpoint_every=params["checkpoint_every"],
        record_entries=params["debug_entries"], checkpoint_extra=extra, objective=objective,
        schedule=make_schedule(params, data.val is not None),
        early_stopping=EarlyStopping.from_params(params["early_stopping"], data.val is not None),
        in_memory=int(params["in_memory"]),
        on_epoch=tracking.on_epoch if tracking else None,
        on_step=tracking.on_step if tracking else None,
    )  # fmt: skip
    test = None
    if data.test is not None:
        test = _test(model, out, data, params, objective, history)
    summary = _summary(history, done, begin, data, params, world, test, fold)
    if params["early_stopping"]:
        state = load_checkpoint(out / CHECKPOINT_FILE)
        monitor = state.get(CheckpointKey.MONITOR) or {}
        summary["early_stopping"] = {**monitor, "stopped": bool(state.get(CheckpointKey.STOPPED))}
    if rank == 0:
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=_json_safe))
    if tracking is not None:
        tracking.finish()
    return summary


def _checkpoint_extra(params, data: RunData, model_args, record, objective) -> dict[str, Any]:
    """What every checkpoint of the run says about its model, for export (rootml.runfolder)."""
    K = CheckpointKey
    extra = {
        K.MODEL_FILE: MODEL_FILE,
        K.MODEL_ARGS: model_args,
        K.LAYOUT: params["layout"],
        K.FEATURE_NAMES: data.train.feature_names,
        K.LABELS: label_names(data.train.file_labels),
        K.NORMALIZE: params["normalize"],
        K.PAD_VALUE: params["pad_value"],
        K.SPECS: data.specs.to_dict(),
        K.PARAMS: record,
        K.TREE: data.train.tree,
        K.BRANCHES: list(data.train.branch_info),
    }
    if data.regression:
        extra[K.REGRESSION] = {**objective.checkpoint_record(), "stats": data.targets}
        extra[K.LABELS] = None
    return extra


def _selection(files: Any, labels: Any, params: dict[str, Any]) -> tuple[Selection, Any]:
    """What the run reads (its files resolved once, so every rank and dataset agrees) and the
    labels (per file; from `files` when it is a dict path -> label and `labels` is None)."""
    urls, dict_labels = resolve_files(files, params["redirector"])
    keys = ("tree", "branches", "exclude", "cut", "aliases", "chunk_size", "redirector", "cache")
    selection = Selection(urls, **{key: params[key] for key in (*keys, "cache_size")})
    return selection, dict_labels if labels is None else labels


def _test(model, out: Path, data: RunData, params, objective, history) -> dict[str, Any]:
    """The test set scored once, by the best epoch's model when early stopping kept one."""
    epoch = history[-1]["epoch"] if history else 0
    best = out / BEST_FILE
    if best.is_file():
        state = load_checkpoint(best)
        model.load_state_dict(state[CheckpointKey.MODEL_STATE])
        epoch = state[CheckpointKey.EPOCH]
    metrics = evaluate(model, data.test, out_dir=out, objective=objective, device=params["device"],
                       num_workers=params["num_workers"], epoch=epoch)  # fmt: skip
    return {**metrics.result("test"), "epoch": epoch}


def _summary(history, done, begin, data: RunData, params, world, test, fold) -> dict[str, Any]:
    summary = {
        **_timings(history, done or 0, time.perf_counter() - begin),
        "train_entries": data.train.num_entries,
        "val_entries": data.val.num_entries if data.val else 0,
        "test_entries": data.test.num_entries if data.test else 0,
        "features": len(data.train.feature_names),
        "final": history[-1] if history else {},
        "report": dict(data.train.report),
        "device": _device_name(resolve_device(params["device"])),
        "world_size": world,
        "num_workers": params["num_workers"],
        "amp": bool(params["amp"]),
        "versions": _versions(),
    }
    if test is not None:
        summary["test"] = test
    if fold is not None:
        summary["fold"] = fold
    return summary


def _history(out: Path) -> list[dict[str, Any]]:
    try:
        return json.loads((out / "history.json").read_text())
    except (OSError, ValueError):
        return []


def _write_inputs(out: Path, model_file: str | os.PathLike, specs: Specs, record: dict) -> None:
    """What a new run folder keeps of its inputs: model.py, specs.json, params.json (`record`:
    the effective parameters, files and labels), and the histograms of params "hist"."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MODEL_FILE).exists() or not (out / MODEL_FILE).samefile(model_file):
        shutil.copy(model_file, out / MODEL_FILE)
    specs.save(out / SPECS_FILE)
    (out / PARAMS_FILE).write_text(json.dumps(record, indent=1, default=str))
    if record["hist"]:
        folder = out / str(record["hist"])
        _histograms(record["files"], record["labels"], record, reserved(record), specs, folder)


def _timings(history: list[dict[str, Any]], done: int, seconds: float) -> dict[str, Any]:
    """The summary's epochs and times: per epoch seconds and events (training + validation
    entries), events/s over the epochs' own time (all epochs of a resumed run), and `seconds`,
    the whole call, setup included."""
    epoch_seconds = [row["seconds"] for row in history]
    epoch_events = [row["train_events"] + row.get("val_events", 0) for row in history]
    total = sum(epoch_seconds)
    return {
        "epochs": len(history),
        "new_epochs": len(history) - done,
        "seconds": seconds,
        "seconds_per_epoch": total / len(history) if history else None,
        "epoch_seconds": epoch_seconds,
        "epoch_events": epoch_events,
        "events_per_s": sum(epoch_events) / total if total > 0 else None,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _histograms(urls, labels, params, reserved, specs, folder: Path) -> None:
    """MLaaS4HEP's "hist": one PNG per feature branch, classes overlaid, over every selected
    entry (an inspection of the inputs, binned over the training Specs' ranges)."""
    from rootml.datasets import fit_histograms

    selection = _selection(urls, labels, params)[0].replace(
        exclude=[*(params["exclude"] or []), *reserved], nevts=params["specs_nevts"]
    )
    _, histograms = fit_histograms(
        selection=selection,
        labels=labels,
        class_names=dict(enumerate(label_names(labels))),
        ranges=specs,
        seed=params["seed"],
    )
    histograms.plot(folder)


def _versions() -> dict[str, str]:
    import numpy
    import uproot

    import rootml

    return {
        "rootml": rootml.__version__,
        "torch": torch.__version__,
        "uproot": uproot.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _json_safe(value: Any) -> Any:
    return str(value)
