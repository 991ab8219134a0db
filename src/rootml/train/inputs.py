"""What a run trains on, from its parameters: the datasets of its splits (rootml.train.splits),
the Specs fitted on the training entries (with the reweighting histograms), the regression
targets' statistics, the objective and the learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rootml.datasets import RootIterableDataset, Selection, fit_specs
from rootml.errors import ConfigError
from rootml.runfolder import CHECKPOINT_FILE, SPECS_FILE, CheckpointKey, load_checkpoint
from rootml.train.objectives import Classification, Regression
from rootml.train.params import dataset_arguments
from rootml.train.schedule import LRSchedule
from rootml.train.splits import fold_parts, n_folds_of, split_entries
from rootml.transforms import Specs
from rootml.transforms.reweight import Reweighting

# Dataset arguments of the training set alone: validation and test read every entry once.
TRAINING_ONLY = ("resample", "resample_ratio")


@dataclass
class RunData:
    """The fitted Specs, the datasets of a run, and the regression targets' statistics."""

    specs: Specs
    train: Any
    val: Any
    test: Any
    targets: dict[str, list[float]] | None = None

    @property
    def regression(self) -> bool:
        return self.targets is not None


def run_data(
    selection: Selection, labels: Any, params: dict, resumed: Path | None, fold: int | None
) -> RunData:
    """The Specs fitted on the training entries of `selection` (or read from the `resumed` run
    folder), and the training, validation and test datasets (None for an empty part)."""
    common = {k: v for k, v in dataset_arguments(params).items() if k not in Selection.FIELDS}
    probe = RootIterableDataset(
        selection=selection.replace(nevts=params["nevts"]),
        labels=labels,
        max_len=1,
        **{k: v for k, v in common.items() if k not in ("normalize", *TRAINING_ONLY)},
    )
    if not params["target_branch"]:
        check_classes(probe.file_labels, labels, params["label_branch"])
    if fold is None:
        parts = split_entries(probe.ranges, params["val_fraction"], params["test_fraction"])
    else:
        n = n_folds_of(params["folds"], params["n_folds"])
        parts = fold_parts(probe.ranges, params["val_fraction"], params["folds"], n, fold, params["cut"])  # fmt: skip
    train_selection = selection.replace(entries=parts.train)
    if resumed is not None:
        specs = Specs.load(resumed / SPECS_FILE)
    else:
        specs = fit_run_specs(train_selection, labels, params)
    targets = target_stats(train_selection, params, resumed) if params["target_branch"] else None
    common.update(targets=params["target_branch"], reweight=bool(params["reweight_vars"]),
                  specs=specs, reuse_specs=fold is not None)  # fmt: skip
    evaluation = {k: v for k, v in common.items() if k not in TRAINING_ONLY}
    evaluation.update(shuffle=False, balance=None)

    def dataset(entries, options, cut):
        if not sum(stop - start for start, stop in entries):
            return None
        part = selection.replace(entries=entries, cut=cut)
        return RootIterableDataset(selection=part, labels=labels, **options)

    train = dataset(parts.train, common, parts.train_cut or params["cut"])
    if train is None:
        raise ConfigError("no training entries: lower val_fraction / test_fraction, or give more entries")  # fmt: skip
    val = dataset(parts.val, evaluation, parts.train_cut or params["cut"]) if params["val_fraction"] > 0 else None  # fmt: skip
    test = dataset(parts.test, evaluation, parts.test_cut or params["cut"])
    return RunData(specs, train, val, test, targets)


def fit_run_specs(selection: Selection, labels: Any, params: dict) -> Specs:
    """The run's Specs on `selection` (its training entries), without the reserved branches,
    with the reweighting histograms of params "reweight_vars"."""
    reweight = None
    if params["reweight_vars"]:
        reweight = Reweighting.from_params(params["reweight_vars"], params["reweight_method"],
                                           params["reweight_reference"], params["reweight_max"])  # fmt: skip
    return fit_specs(
        selection=selection.replace(exclude=[*(params["exclude"] or []), *reserved(params)]),
        nevts=params["specs_nevts"],
        max_len=params["max_len"],
        seed=params["seed"],
        reweight=reweight,
        labels=labels,
        label_branch=params["label_branch"],
        weights=params["weights"],
        weight_branch=params["weight_branch"],
        nan_policy=params["nan_policy"],
    )


def target_stats(
    selection: Selection, params: dict, resumed: Path | None
) -> dict[str, list[float]]:
    """mean, std, low, high of each regression target over the training entries of `selection`
    (a pass over the target branches alone), or those of the `resumed` run's checkpoint."""
    if resumed is not None:
        checkpoint = load_checkpoint(resumed / CHECKPOINT_FILE)
        stats = (checkpoint.get(CheckpointKey.REGRESSION) or {}).get("stats")
        if stats:
            return stats
    fitted = fit_specs(
        selection=selection.replace(branches=params["target_branch"], exclude=None),
        nevts=params["specs_nevts"],
        seed=params["seed"],
    )
    names = params["target_branch"]
    specs = [fitted.branches[name] for name in names]
    for name, spec in zip(names, specs):
        if spec.kind != "flat" or not spec.count:
            raise ConfigError(f"target_branch {name!r} must hold one finite number per entry ({spec.kind}, {spec.count} finite values)")  # fmt: skip
    return {"mean": [s.mean for s in specs], "std": [s.std for s in specs],
            "low": [s.min for s in specs], "high": [s.max for s in specs]}  # fmt: skip


def make_objective(params: dict[str, Any], data: RunData) -> Any:
    if not data.regression:
        if params["loss"] is not None:
            raise ConfigError(f"loss {params['loss']!r} is a regression loss: give target_branch")
        return Classification(params["class_weights"], label_names(data.train.file_labels))
    if params["class_weights"] or params["balance"] or params["resample"]:
        raise ConfigError("class_weights, balance and resample are for classification, not target_branch")  # fmt: skip
    t = data.targets
    return Regression(params["target_branch"], t["mean"], t["std"], t["low"], t["high"],
                      params["loss"] or "mse", params["huber_delta"],
                      params["target_normalize"] == "standard")  # fmt: skip


def make_schedule(params: dict[str, Any], has_val: bool) -> LRSchedule:
    stopping = params["early_stopping"] or {}
    metric = stopping.get("metric") or ("val_loss" if has_val else "train_loss")
    return LRSchedule(params["lr"], params["epochs"], params["lr_schedule"], params["warmup_epochs"],
                      params["lr_min"], params["lr_step"], params["lr_gamma"], params["lr_patience"],
                      metric, stopping.get("mode"))  # fmt: skip


def reserved(params: dict[str, Any]) -> list[str]:
    """Identifier, label, weight and target branches: never features, so the Specs leave them
    out."""
    return [
        *(params["identifiers"] or []),
        *filter(None, [params["label_branch"], params["weight_branch"]]),
        *(params["target_branch"] or []),
    ]


def check_classes(file_labels: list[int], labels: Any, label_branch: str | None) -> None:
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


def label_names(labels: list[int]) -> list[str]:
    classes = sorted(set(labels))
    if classes == [0, 1]:
        return ["background", "signal"]
    return [str(c) for c in range(max(classes) + 1)]
