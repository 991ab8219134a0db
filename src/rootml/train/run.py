"""A whole training run from MLaaS4HEP-style inputs: files, labels, model.py, params.json."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from rootml.datasets import RootIterableDataset, fit_specs
from rootml.datasets._files import resolve_files
from rootml.errors import FileAccessError
from rootml.train.fit import fit, init_distributed, resolve_device
from rootml.train.params import dataset_arguments, load_params
from rootml.transforms import FlatLayout
from rootml.transforms.collection import layout_parts

log = logging.getLogger(__name__)


def load_model_factory(path: str | os.PathLike):
    """The `model(idim)` function of a user's model.py."""
    spec = importlib.util.spec_from_file_location("rootml_user_model", path)
    if spec is None or not os.path.isfile(path):
        raise FileAccessError(f"model file not found: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "model", None)):
        raise FileAccessError(f"{path} defines no function model(idim)")
    return module.model


def split_ranges(ranges: list[tuple[int, int]], val_fraction: float) -> tuple[list, list]:
    """Train / validation entry ranges: the last `val_fraction` of each file's selected entries
    is held out, by entry number, so no validation entry is ever trained on."""
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
    params.json, model.py, specs.json, checkpoint.pt, history.csv/json, plots/, summary.json.
    Statistics for normalisation are fitted on the training entries only. Returns the summary.
    """
    params = load_params(params)
    params.update({k: v for k, v in overrides.items() if v is not None})
    out = Path(out_dir)
    device = resolve_device(params["device"])
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
    specs = fit_specs(
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
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(model_file, out / "model.py")
        specs.save(out / "specs.json")
        (out / "params.json").write_text(
            json.dumps(
                {**params, "files": urls, "labels": train._file_labels}, indent=1, default=str
            )
        )
        if params["hist"]:
            _histograms(urls, train._file_labels, params, train_ranges, out / str(params["hist"]))
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
        checkpoint_extra=extra,
    )
    seconds = time.perf_counter() - begin
    summary = {
        "epochs": len(history),
        "seconds": seconds,
        "seconds_per_epoch": seconds / max(len(history), 1),
        "events_per_s": sum(r["train_events"] + r.get("val_events", 0) for r in history) / seconds
        if seconds
        else None,
        "train_entries": train.num_entries,
        "val_entries": val.num_entries if val else 0,
        "features": len(train.feature_names),
        "final": history[-1] if history else {},
        "report": dict(train.report),
        "device": str(device),
        "world_size": world,
        "versions": _versions(),
    }
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_safe))
    return summary


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


def _histograms(urls, labels, params, ranges, folder: Path) -> None:
    from rootml.datasets import fit_histograms

    _, histograms = fit_histograms(
        urls,
        params["tree"],
        params["branches"],
        params["exclude"],
        params["cut"],
        params["aliases"],
        labels=labels,
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
