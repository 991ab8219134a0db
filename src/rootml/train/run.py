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

import torch

from rootml._runtime import distributed
from rootml.datasets import RootIterableDataset, Selection, fit_specs, resolve_files
from rootml.errors import ConfigError
from rootml.runfolder import MODEL_FILE, SPECS_FILE, SUMMARY_FILE, CheckpointKey
from rootml.train.distributed import init_distributed, resolve_device
from rootml.train.fit import fit
from rootml.train.folder import check_run_folder, clear_run_folder, finished_summary
from rootml.train.model import build_model, model_arguments
from rootml.train.params import dataset_arguments, load_params
from rootml.transforms import Specs

log = logging.getLogger(__name__)


def split_ranges(ranges: list[tuple[int, int]], val_fraction: float) -> tuple[list, list]:
    """Train / validation entry ranges: the last `val_fraction` of each file's selected entries
    (ranges: [start, stop) per file) is held out, by entry number, so no validation entry is ever
    trained on and the split does not depend on shuffling, workers or ranks."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), not {val_fraction}")
    train, val = [], []
    for start, stop in ranges:
        cut = stop - int(round((stop - start) * val_fraction))
        train.append((start, cut))
        val.append((cut, stop))
    return train, val


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
    summary.json (and debug/ with params "debug_entries").

    params: params.json or a dict (rootml.train.params: MLaaS4HEP keys and rootml's own);
    overrides (e.g. device="cpu", epochs=3) win over it. The last `val_fraction` of each file's
    selected entries is the validation set (split_ranges); the Specs (pad lengths and the
    statistics of `normalize`) are fitted on the training entries only, and on resume read back
    from out_dir/specs.json. Under torchrun every rank calls this; rank 0 writes.

    A run folder that already holds a run is refused unless `resume` (continue it up to
    `epochs`; "auto": only if it holds one, else start it) or `overwrite` (its checkpoints,
    history, plots and Specs are deleted first). When a resumed run already has `epochs`
    epochs, nothing is trained and its summary is returned with "new_epochs" 0; fewer `epochs`
    than it has is a ConfigError.

    Before training, the model is built and run on a zero batch of the dataset's shape on the
    CPU, so a model that does not fit the inputs is refused at once (ModelError naming the model
    file, its arguments and torch's message). Files that all have one label (no labels.txt and
    no label_branch) are refused: the model would learn one class.

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
    done = check_run_folder(out, resume, overwrite, params["epochs"])
    if world > 1:  # every rank reads the folder before rank 0 changes it
        torch.distributed.barrier()
    if done == params["epochs"]:
        _leave_group(started, world)
        return finished_summary(out, done)
    if overwrite and rank == 0:
        clear_run_folder(out)
    selection, labels = _selection(files, labels, params)
    torch.manual_seed(params["seed"])
    specs, train, val = _datasets(selection, labels, params, out if done is not None else None)
    model_args = model_arguments(train)
    classes = None if params["label_branch"] else max(train.file_labels) + 1
    model = build_model(model_file, model_args, train, classes)
    record = {**params, "files": train.files, "labels": train.file_labels}
    if rank == 0 and done is None:
        _write_inputs(out, model_file, specs, record)
    history = fit(
        model, train, val, out_dir=out, **_fit_arguments(params), resume=done is not None,
        checkpoint_extra=_checkpoint_extra(train, params, specs, model_args, record),
    )  # fmt: skip
    summary = {
        **_timings(history, done or 0, time.perf_counter() - begin),
        **_outcome(history, train, val, device, world, params),
    }
    if rank == 0:
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=_json_safe))
    _leave_group(started, world)
    return summary


def _leave_group(started: bool, world: int) -> None:
    """End the process group this run started (one started by the caller stays)."""
    if started and world > 1:
        torch.distributed.destroy_process_group()


def _selection(files: Any, labels: Any, params: dict[str, Any]) -> tuple[Selection, Any]:
    """What the run reads (its files resolved once, so every rank and dataset agrees) and the
    labels (per file; from `files` when it is a dict path -> label and `labels` is None)."""
    urls, dict_labels = resolve_files(files, params["redirector"])
    keys = ("tree", "branches", "exclude", "cut", "aliases", "chunk_size", "redirector", "cache")
    keys += ("cache_size",)
    selection = Selection(urls, **{key: params[key] for key in keys})
    return selection, dict_labels if labels is None else labels


def _fit_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """The arguments of rootml.train.fit that params.json sets."""
    return {
        "epochs": params["epochs"],
        "lr": params["lr"],
        "device": params["device"],
        "num_workers": params["num_workers"],
        "amp": params["amp"],
        "class_weights": params["class_weights"],
        "checkpoint_every": params["checkpoint_every"],
        "record_entries": params["debug_entries"],
    }


def _checkpoint_extra(
    train: RootIterableDataset, params: dict, specs: Specs, model_args: dict, record: dict
) -> dict[str, Any]:
    """What every checkpoint of the run says about its model, for export (rootml.runfolder)."""
    return {
        CheckpointKey.MODEL_FILE: MODEL_FILE,
        CheckpointKey.MODEL_ARGS: model_args,
        CheckpointKey.LAYOUT: params["layout"],
        CheckpointKey.FEATURE_NAMES: train.feature_names,
        CheckpointKey.LABELS: _label_names(train.file_labels),
        CheckpointKey.NORMALIZE: params["normalize"],
        CheckpointKey.PAD_VALUE: params["pad_value"],
        CheckpointKey.SPECS: specs.to_dict(),
        CheckpointKey.PARAMS: record,
        CheckpointKey.TREE: train.tree,
        CheckpointKey.BRANCHES: list(train.branch_info),
    }


def _outcome(history, train, val, device, world: int, params: dict) -> dict[str, Any]:
    """The summary's results and setting: entries, features, final metrics, report, device."""
    return {
        "train_entries": train.num_entries,
        "val_entries": val.num_entries if val else 0,
        "features": len(train.feature_names),
        "final": history[-1] if history else {},
        "report": dict(train.report),
        "device": _device_name(device),
        "world_size": world,
        "num_workers": params["num_workers"],
        "amp": bool(params["amp"]),
        "versions": _versions(),
    }


def _datasets(selection: Selection, labels: Any, params: dict[str, Any], resumed: Path | None):
    """(specs, training dataset, validation dataset or None) of a run: the Specs fitted on the
    training entries, or read from the `resumed` run folder."""
    common = {k: v for k, v in dataset_arguments(params).items() if k not in Selection.FIELDS}
    probe = RootIterableDataset(
        selection=selection.replace(nevts=params["nevts"]),
        labels=labels,
        max_len=1,
        **{k: v for k, v in common.items() if k != "normalize"},
    )
    _check_classes(probe.file_labels, labels, params["label_branch"])
    train_ranges, val_ranges = split_ranges(probe.ranges, params["val_fraction"])
    train_selection = selection.replace(entries=train_ranges)
    specs = (
        Specs.load(resumed / SPECS_FILE)
        if resumed is not None
        else fit_specs(
            selection=train_selection.replace(exclude=_excluded(params)),
            nevts=params["specs_nevts"],
            max_len=params["max_len"],
            seed=params["seed"],
        )
    )
    train = RootIterableDataset(selection=train_selection, labels=labels, specs=specs, **common)
    val = None
    if params["val_fraction"] > 0:
        options = dict(common, shuffle=False, balance=None)
        val = RootIterableDataset(
            selection=selection.replace(entries=val_ranges), labels=labels, specs=specs, **options
        )
    return specs, train, val


def _excluded(params: dict[str, Any]) -> list[str]:
    """The branches the Specs leave out: `exclude` and the reserved ones."""
    return [*(params["exclude"] or []), *_reserved(params)]


def _reserved(params: dict[str, Any]) -> list[str]:
    """Identifier, label and weight branches: never features, so the Specs leave them out."""
    return [
        *(params["identifiers"] or []),
        *filter(None, [params["label_branch"], params["weight_branch"]]),
    ]


def _write_inputs(out: Path, model_file: str | os.PathLike, specs: Specs, record: dict) -> None:
    """What a new run folder keeps of its inputs: model.py, specs.json, params.json (`record`:
    the effective parameters, files and labels), and the histograms of params "hist"."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "model.py").exists() or not (out / "model.py").samefile(model_file):
        shutil.copy(model_file, out / "model.py")
    specs.save(out / "specs.json")
    (out / "params.json").write_text(json.dumps(record, indent=1, default=str))
    if record["hist"]:
        folder = out / str(record["hist"])
        _histograms(record["files"], record["labels"], record, _reserved(record), specs, folder)


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


def _check_classes(file_labels: list[int], labels: Any, label_branch: str | None) -> None:
    """Refuse a run whose entries would all be one class (AUC undefined, nothing learnt)."""
    if label_branch or len(set(file_labels)) > 1:
        return
    if labels is None:
        raise ConfigError(
            "no labels: every file would be class 0 and the model would learn one class; give "
            "--labels (labels.txt, one per file, or one per file on the command line) or the "
            "params.json key label_branch"
        )
    raise ConfigError(
        f"every file has label {file_labels[0] if file_labels else None}: the model would learn "
        "one class; give files of at least two classes"
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _histograms(urls, labels, params, reserved, specs, folder: Path) -> None:
    """MLaaS4HEP's "hist": one PNG per feature branch, classes overlaid, over every selected
    entry (an inspection of the inputs, binned over the training Specs' ranges)."""
    from rootml.datasets import fit_histograms

    keys = ("tree", "branches", "cut", "aliases", "chunk_size", "redirector", "cache", "cache_size")
    selection = Selection(
        urls, exclude=[*(params["exclude"] or []), *reserved], nevts=params["specs_nevts"],
        **{key: params[key] for key in keys},
    )  # fmt: skip
    _, histograms = fit_histograms(
        selection=selection,
        labels=labels,
        class_names=dict(enumerate(_label_names(labels))),
        ranges=specs,
        seed=params["seed"],
    )
    histograms.plot(folder)


def _label_names(labels: list[int]) -> list[str]:
    classes = sorted(set(labels))
    if classes == [0, 1]:
        return ["background", "signal"]
    return [str(c) for c in range(max(classes) + 1)]


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
