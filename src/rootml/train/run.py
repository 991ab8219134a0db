"""A whole training run from MLaaS4HEP-style inputs: files, labels, model.py, params.json."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rootml.datasets import RootIterableDataset, fit_specs
from rootml.datasets._files import resolve_files
from rootml.errors import ConfigError, FileAccessError, ModelError
from rootml.train.checkpoint import load_checkpoint
from rootml.train.distributed import init_distributed, resolve_device
from rootml.train.fit import fit
from rootml.train.params import dataset_arguments, load_params
from rootml.transforms import FlatLayout, Specs
from rootml.transforms.collection import layout_parts
from rootml.transforms.feed import call_model

log = logging.getLogger(__name__)


def load_model_factory(path: str | os.PathLike):
    """The `model` function of a user's model.py: model(idim) for the flat layout, model(inputs)
    for the collection layout. Raises FileAccessError when the file is missing, ModelError when
    it does not import or defines no `model`."""
    if not os.path.isfile(path):
        raise FileAccessError(f"model file not found: {path}")
    name = "rootml_user_model_" + hashlib.sha1(str(os.path.abspath(path)).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs so that dataclasses and pickling inside the user's file work.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(name, None)
        raise ModelError(f"cannot import model file {path}: {err!r}") from err
    if not callable(getattr(module, "model", None)):
        raise ModelError(f"{path} defines no function model(idim)")
    return module.model


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
    resume: bool = False,
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
    `epochs`) or `overwrite` (its checkpoints, history, plots and Specs are deleted first). When
    a resumed run already has `epochs` epochs, nothing is trained and its summary is returned
    with "new_epochs" 0; fewer `epochs` than it has is a ConfigError.

    Before training, the model is built and run on a zero batch of the dataset's shape on the
    CPU, so a model that does not fit the inputs is refused at once (ModelError naming the model
    file, its arguments and torch's message). Files that all have one label (no labels.txt and
    no label_branch) are refused: the model would learn one class.

    Returns the summary (also in summary.json): "new_epochs" trained by this call, and per
    epoch "epoch_seconds" and "epoch_events" (training + validation entries). Raises what
    RootIterableDataset, fit_specs and fit raise; ConfigError for parameters that cannot work.
    """
    params = load_params(params, **overrides)
    if params["verbose"]:
        logging.getLogger("rootml").setLevel(
            logging.DEBUG if params["verbose"] > 1 else logging.INFO
        )
    out = Path(out_dir)
    done = _check_run_folder(out, resume, overwrite, params["epochs"])
    if done == params["epochs"]:
        return _finished_summary(out, done)
    device = resolve_device(params["device"])
    started = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    rank, world = init_distributed(device)
    if overwrite and rank == 0:
        _clear_run_folder(out)
    urls, dict_labels = resolve_files(files, params["redirector"])
    labels = dict_labels if labels is None else labels
    torch.manual_seed(params["seed"])
    common = dataset_arguments(params)
    probe = RootIterableDataset(
        urls,
        labels=labels,
        nevts=params["nevts"],
        max_len=1,
        **{k: v for k, v in common.items() if k not in ("normalize",)},
    )
    _check_classes(probe._file_labels, labels, params["label_branch"])
    train_ranges, val_ranges = split_ranges(probe.ranges, params["val_fraction"])
    # Identifier, label and weight branches are never features: the Specs leave them out too.
    reserved = [
        *(params["identifiers"] or []),
        *filter(None, [params["label_branch"], params["weight_branch"]]),
    ]
    resuming = done is not None
    specs = (
        Specs.load(out / "specs.json")
        if resuming
        else fit_specs(
            urls,
            params["tree"],
            params["branches"],
            [*(params["exclude"] or []), *reserved],
            params["cut"],
            params["aliases"],
            params["specs_nevts"],
            params["max_len"],
            entries=train_ranges,
            chunk_size=params["chunk_size"],
            seed=params["seed"],
            redirector=params["redirector"],
        )
    )
    exclude_reserved = {k: v for k, v in common.items()}
    train = RootIterableDataset(
        urls, labels=labels, entries=train_ranges, specs=specs, **exclude_reserved
    )
    val_options = dict(exclude_reserved, shuffle=False, balance=None)
    val = (
        RootIterableDataset(urls, labels=labels, entries=val_ranges, specs=specs, **val_options)
        if params["val_fraction"] > 0
        else None
    )
    model_args = _model_args(train)
    classes = None if params["label_branch"] else max(train._file_labels) + 1
    model = build_model(model_file, model_args, train, classes)
    if rank == 0 and not resuming:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "model.py").exists() or not (out / "model.py").samefile(model_file):
            shutil.copy(model_file, out / "model.py")
        specs.save(out / "specs.json")
        (out / "params.json").write_text(
            json.dumps(
                {**params, "files": urls, "labels": train._file_labels}, indent=1, default=str
            )
        )
        if params["hist"]:
            _histograms(
                urls, train._file_labels, params, reserved, specs, out / str(params["hist"])
            )
    extra = {
        "model_file": "model.py",
        "model_args": model_args,
        "layout": params["layout"],
        "feature_names": train.feature_names,
        "labels": _label_names(train._file_labels),
        "normalize": params["normalize"],
        "pad_value": params["pad_value"],
        "specs": specs.to_dict(),
        "params": {**params, "files": urls, "labels": train._file_labels},
        "tree": train.tree,
        "branches": list(train.branch_info),
    }
    begin = time.perf_counter()
    history = fit(
        model,
        train,
        val,
        out_dir=out,
        epochs=params["epochs"],
        lr=params["lr"],
        device=params["device"],
        num_workers=params["num_workers"],
        amp=params["amp"],
        class_weights=params["class_weights"],
        resume=resume,
        checkpoint_every=params["checkpoint_every"],
        record_entries=params["debug_entries"],
        checkpoint_extra=extra,
    )
    seconds = time.perf_counter() - begin
    epoch_seconds = [row["seconds"] for row in history]
    epoch_events = [row["train_events"] + row.get("val_events", 0) for row in history]
    summary = {
        "epochs": len(history),
        "new_epochs": len(history) - (done or 0),
        "seconds": seconds,  # this call, setup included (a resumed run: since the resume)
        "seconds_per_epoch": sum(epoch_seconds) / len(history) if history else None,
        "epoch_seconds": epoch_seconds,
        "epoch_events": epoch_events,
        # Training and validation entries over the epochs' own time (all epochs of a resumed run).
        "events_per_s": sum(epoch_events) / sum(epoch_seconds) if sum(epoch_seconds) > 0 else None,
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
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_safe))
    if started and world > 1:
        torch.distributed.destroy_process_group()
    return summary


# What a run writes into its folder (besides params["hist"]); --overwrite deletes these first.
# model.py stays: it may be the very file the run trains.
_RUN_FILES = ("checkpoint.pt", "checkpoint.pt.tmp", "specs.json", "params.json", "history.csv",
              "history.json", "summary.json")  # fmt: skip
_RUN_FOLDERS = ("checkpoints", "plots", "debug")


def _check_run_folder(out: Path, resume: bool, overwrite: bool, epochs: int) -> int | None:
    """Epochs completed by the run in `out` when resuming it, else None. Raises ConfigError for
    a folder holding a run (without resume or overwrite), resume without a run, a run with more
    epochs than `epochs`, and resume with overwrite."""
    if resume and overwrite:
        raise ConfigError("give --resume (continue the run) or --overwrite (start again), not both")
    held = [n for n in ("checkpoint.pt", "checkpoints", "specs.json") if (out / n).exists()]
    if not resume:
        if held and not overwrite:
            raise ConfigError(
                f"{out} already holds a run ({', '.join(held)}): continue it with --resume, "
                "start it again with --overwrite, or choose another --out"
            )
        return None
    if not ((out / "checkpoint.pt").is_file() and (out / "specs.json").is_file()):
        raise ConfigError(
            f"--resume: {out} holds no run (checkpoint.pt and specs.json) to continue"
        )
    state = load_checkpoint(out / "checkpoint.pt")
    done = int(state["epoch"])
    if done > epochs or (done == epochs and state.get("partial")):
        raise ConfigError(
            f"{out} has trained {done} epochs, more than epochs={epochs}: give --epochs above "
            f"{done} to continue it, or --overwrite to start again"
        )
    return done


def _clear_run_folder(out: Path) -> None:
    """Delete what an earlier run wrote into `out` (so no stale checkpoint or plot remains)."""
    try:
        hist = json.loads((out / "params.json").read_text()).get("hist")
    except (OSError, ValueError, AttributeError):
        hist = None
    for name in _RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in (*_RUN_FOLDERS, *([str(hist)] if hist else [])):
        if (out / name).is_dir() and (out / name).resolve().is_relative_to(out.resolve()):
            shutil.rmtree(out / name)


def _finished_summary(out: Path, done: int) -> dict[str, Any]:
    """The summary of a run that already has its epochs, marked as trained by no call."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {"epochs": done}
    return {**summary, "new_epochs": 0}


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


def build_model(
    model_file: str | os.PathLike,
    model_args: dict[str, Any],
    train: Any,
    classes: int | None = None,
):
    """The user's model(**model_args), checked on a zero batch of `train`'s shape (two rows,
    masks True) on the CPU in eval mode. Raises ModelError naming `model_file`, the arguments
    and the exception when building or running it fails, or its output is not (B,), (B, 1)
    probabilities or (B, C) logits for labels 0 .. `classes` - 1 (when known)."""
    factory = load_model_factory(model_file)
    call = f"{model_file}: model({', '.join(f'{k}={v}' for k, v in model_args.items())})"
    try:
        model = factory(**model_args)
    except Exception as err:  # the user's code: any failure is theirs to see, in one line
        raise ModelError(f"{call} fails: {type(err).__name__}: {err}") from err
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"{call} returns {type(model).__name__}, not a torch.nn.Module")
    layout = "flat" if isinstance(train.layout, FlatLayout) else "collection"
    inputs = _zero_batch(train, model_args)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items() if "mask" not in k)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = call_model(model, layout, inputs)
    except Exception as err:  # shape mismatches are RuntimeErrors from inside the user's forward
        message = str(err).splitlines()[0] if str(err) else ""
        raise ModelError(
            f"{call} does not take a batch of {shapes}: {type(err).__name__}: {message}"
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or output.ndim not in (1, 2) or len(output) != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(
            f"{call} returns {shape} for a batch of 2: expected (2,) or (2, 1) probabilities "
            "or (2, C) logits"
        )
    width = 1 if output.ndim == 1 else output.shape[1]
    if classes is not None and classes > max(width, 2):
        what = "one probability" if width == 1 else f"{width} logits"
        raise ModelError(
            f"{call} returns {what} per entry, but the labels have {classes} classes "
            f"(0-{classes - 1}): return (B, {classes}) logits"
        )
    return model


def _zero_batch(train: Any, model_args: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Two entries of zeros in `train`'s layout (masks True), in the order the batches have."""
    shapes = model_args.get("inputs", {"features": model_args.get("idim")})
    batch = {}
    for array, mask, branches in layout_parts(train.layout):
        if branches:
            shape = shapes[array]
            dims = [shape] if isinstance(shape, int) else list(shape)
            batch[array] = torch.zeros(2, *dims)
            batch[mask] = torch.ones(2, dims[-1], dtype=torch.bool)
    return batch


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _model_args(train: RootIterableDataset) -> dict[str, Any]:
    """model(idim=F) for the flat layout; model(inputs=...) for the collection layout, inputs
    describing each part: {"features": F0, "Jet": [C, N], ...} (shapes without the batch)."""
    if isinstance(train.layout, FlatLayout):
        return {"idim": len(train.feature_names)}
    inputs = {}
    for array, _, branches in layout_parts(train.layout):
        if branches:
            width = len(branches)
            inputs[array] = width if array == "features" else [width, train.layout.lengths[array]]
    return {"inputs": inputs}


def _histograms(urls, labels, params, reserved, specs, folder: Path) -> None:
    """MLaaS4HEP's "hist": one PNG per feature branch, classes overlaid, over every selected
    entry (an inspection of the inputs, binned over the training Specs' ranges)."""
    from rootml.datasets import fit_histograms

    _, histograms = fit_histograms(
        urls,
        params["tree"],
        params["branches"],
        [*(params["exclude"] or []), *reserved],
        params["cut"],
        params["aliases"],
        params["specs_nevts"],
        labels=labels,
        class_names=dict(enumerate(_label_names(labels))),
        ranges=specs,
        chunk_size=params["chunk_size"],
        seed=params["seed"],
        redirector=params["redirector"],
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
