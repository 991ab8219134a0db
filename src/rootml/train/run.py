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
from rootml.errors import FileAccessError, ModelError
from rootml.train.distributed import init_distributed, resolve_device
from rootml.train.fit import fit
from rootml.train.params import dataset_arguments, load_params
from rootml.transforms import FlatLayout, Specs
from rootml.transforms.collection import layout_parts

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
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
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
    Returns the summary (also in summary.json). Raises what RootIterableDataset, fit_specs and
    fit raise; ValueError for unknown parameters.
    """
    params = load_params(params)
    params.update({k: v for k, v in overrides.items() if v is not None})
    if params["verbose"]:
        logging.getLogger("rootml").setLevel(
            logging.DEBUG if params["verbose"] > 1 else logging.INFO
        )
    out = Path(out_dir)
    device = resolve_device(params["device"])
    started = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    rank, world = init_distributed(device)
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
    train_ranges, val_ranges = split_ranges(probe.ranges, params["val_fraction"])
    # Identifier, label and weight branches are never features: the Specs leave them out too.
    reserved = [
        *(params["identifiers"] or []),
        *filter(None, [params["label_branch"], params["weight_branch"]]),
    ]
    resuming = resume and (out / "checkpoint.pt").exists() and (out / "specs.json").exists()
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
    factory = load_model_factory(model_file)
    model_args = _model_args(train)
    model = factory(**model_args)
    if rank == 0 and not resuming:
        out.mkdir(parents=True, exist_ok=True)
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
    events = sum(row["train_events"] + row.get("val_events", 0) for row in history)
    summary = {
        "epochs": len(history),
        "seconds": seconds,  # this call, setup included (a resumed run: since the resume)
        "seconds_per_epoch": sum(epoch_seconds) / len(history) if history else None,
        "epoch_seconds": epoch_seconds,
        # Training and validation entries over the epochs' own time (all epochs of a resumed run).
        "events_per_s": events / sum(epoch_seconds) if sum(epoch_seconds) > 0 else None,
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
