"""params.json: MLaaS4HEP's keys and rootml's own, defined once in `PARAMS` (name, MLaaS4HEP's
name, default, accepted JSON types, meaning). The table gives the defaults of run_from_params,
the validation of params.json (unknown keys, wrong types), the mapping to the arguments of
RootIterableDataset and fit(), and the list that `rootml train --help` prints.

No torch here: the CLI reads this module to build its help.
"""

from __future__ import annotations

import difflib
import json
import os
import textwrap
from dataclasses import dataclass
from typing import Any

from rootml._userfiles import read_json
from rootml.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """One parameter: `name` is rootml's (the argument it becomes), `mlaas4hep` MLaaS4HEP's name
    for it when that differs; `kinds` are the accepted JSON types (null too when the default is
    null or `nullable`); `flag`: also a `rootml train --name` option."""

    name: str
    default: Any
    kinds: tuple[type, ...]
    meaning: str
    group: str
    mlaas4hep: str | None = None
    nullable: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    below: float | None = None
    flag: bool = False


_DATA, _PREP, _TRAIN, _OUT = "input", "preprocessing", "training", "output"
_NAMES = (str, list)  # one branch name/pattern or a list of them
_NUMBER = (int, float)

# fmt: off
PARAMS: tuple[Param, ...] = (
    Param("tree", None, (str,), "TTree/RNTuple name; null: the only one in the file", _DATA,
          mlaas4hep="branch"),
    Param("branches", None, _NAMES, "feature branches, names or glob patterns; null: every "
          "numeric branch", _DATA, mlaas4hep="selected_branches"),
    Param("exclude", None, _NAMES, "branches left out of the features (names or patterns)",
          _DATA, mlaas4hep="exclude_branches"),
    Param("identifiers", None, _NAMES, "branches kept as batch['ids'] (run, event, ...), never "
          "features", _DATA, mlaas4hep="identifier"),
    Param("nevts", None, (int,), "entries to read over all files, split by their sizes; -1 or "
          "null: all", _DATA, flag=True),
    Param("cut", None, (str,), "uproot expression selecting entries, e.g. \"nJet >= 4\"", _DATA),
    Param("aliases", None, (dict,), "derived columns, name -> uproot expression", _DATA),
    Param("label_branch", None, (str,), "branch holding each entry's class, instead of one "
          "label per file", _DATA),
    Param("weights", None, (list, dict), "event weight per file (list in file order, or file "
          "-> weight)", _DATA),
    Param("weight_branch", None, (str,), "branch of per-entry weights (multiplies `weights`)",
          _DATA),
    Param("redirector", None, (str,), "prefix of grid paths not found locally, e.g. "
          "\"root://eospublic.cern.ch/\"", _DATA),
    Param("cache", None, (str,), "folder for local copies of remote files: epoch 2+ reads "
          "local disk", _DATA),
    Param("cache_size", None, (int, str), "bound of the cache folder in bytes or e.g. "
          "\"200GB\"; null: half its free space", _DATA),
    Param("chunk_size", 100_000, (int,), "entries read at once per file", _DATA, minimum=1),
    Param("shuffle", True, (bool,), "shuffle work units and rows every epoch", _DATA),
    Param("max_len", None, (int, float, dict), "pad length of jagged branches: N, a quantile "
          "like 0.99, or per branch/collection; null: the largest multiplicity", _PREP),
    Param("sort_by", None, (dict,), "collection -> branch sorted by before padding, descending "
          "(\"+Jet_pt\": ascending), e.g. {\"Jet\": \"Jet_pt\"}", _PREP),
    Param("normalize", "standard", (str,), "per-feature scaling fitted on the training entries",
          _PREP, nullable=True, choices=("standard", "minmax")),
    Param("nan_policy", "keep", (str,), "NaN/inf values: counted and kept, refused, or made "
          "padding", _PREP, choices=("keep", "raise", "mask")),
    Param("pad_value", 0.0, _NUMBER, "value of padding slots (their mask is False)", _PREP),
    Param("layout", "flat", (str,), "flat: model(idim); collection: model(inputs) with a "
          "(B, C, N) tensor per collection", _PREP, choices=("flat", "collection")),
    Param("specs_nevts", None, (int,), "entries sampled to fit the pad lengths and statistics; "
          "null: every training entry", _PREP, minimum=1),
    Param("balance", None, (str,), "\"class\": weight the classes equally; null: as read",
          _PREP, choices=("class",)),
    Param("resample", None, (str,), "undersample: drop entries of the larger classes; "
          "oversample: repeat entries of the smaller ones, until smallest/largest = "
          "resample_ratio, drawn anew each epoch (training only: validation and test are read "
          "as they are)", _PREP, choices=("undersample", "oversample")),
    Param("resample_ratio", None, _NUMBER, "smallest / largest class after resample, in "
          "(0, 1]; null: 1, equal counts", _PREP, minimum=1e-12),
    Param("reweight_vars", None, (dict,), "kinematic reweighting: variable (one number per "
          "entry) -> bin edges, e.g. {\"HT\": [0, 300, 600, 1e4]}; several: N-D bins; the "
          "per-class histograms are fitted on the training entries with the Specs", _PREP),
    Param("reweight_method", "flat", (str,), "flat: every class flat in the reweight_vars bins; "
          "reference: every class shaped as reweight_reference", _PREP,
          choices=("flat", "reference")),
    Param("reweight_reference", None, (int,), "the class whose distribution the others are "
          "matched to (reweight_method reference)", _PREP),
    Param("reweight_max", 10.0, _NUMBER, "largest reweighting factor (larger ones are clipped "
          "to it)", _PREP, minimum=1e-12),
    Param("target_branch", None, _NAMES, "regression: the target branch(es) or aliases, one "
          "number per entry; the model outputs one float per target", _PREP),
    Param("target_normalize", "standard", (str,), "regression targets standardised with their "
          "mean/std on the training entries for the loss; outputs and export are in the "
          "targets' own units", _PREP, nullable=True, choices=("standard",)),
    Param("epochs", 5, (int,), "passes over the training entries", _TRAIN, minimum=1,
          flag=True),
    Param("batch_size", 1024, (int,), "entries per training step", _TRAIN, minimum=1,
          flag=True),
    Param("lr", 1e-3, _NUMBER, "Adam learning rate", _TRAIN, minimum=0, flag=True),
    Param("val_fraction", 0.2, _NUMBER, "last fraction of each file's entries held out for "
          "validation", _TRAIN, minimum=0, below=1, flag=True),
    Param("test_fraction", 0.0, _NUMBER, "fraction of each file's entries just before the "
          "validation part held out as the test set, scored once after training", _TRAIN,
          minimum=0, below=1, flag=True),
    Param("folds", None, (str,), "k-fold cross validation: expression of an entry's fold, "
          "e.g. \"event % 5\" (fold = value % n_folds); fold k trains on the others and is "
          "scored on its own", _TRAIN),
    Param("n_folds", None, (int,), "number of folds; null: N of a trailing \"% N\" in folds",
          _TRAIN, minimum=2),
    Param("fold", None, (int,), "the one fold to train (0 .. n_folds-1, into OUT/fold_K); null: "
          "every fold in turn", _TRAIN, minimum=0, flag=True),
    Param("loss", None, (str,), "regression loss; null: cross-entropy for classes, mse for "
          "targets; gaussian_nll: outputs are T means then T log variances", _TRAIN,
          choices=("mse", "huber", "gaussian_nll")),
    Param("huber_delta", 1.0, _NUMBER, "Huber loss: quadratic within this many target "
          "standard deviations", _TRAIN, minimum=1e-12),
    Param("class_weights", None, (list,), "one factor per class multiplying the loss weights",
          _TRAIN),
    Param("seed", 0, (int,), "seed of shuffling, sampling and initialisation", _TRAIN,
          flag=True),
    Param("device", "auto", (str,), "auto, cpu, cuda or cuda:N", _TRAIN, flag=True),
    Param("num_workers", 0, (int,), "DataLoader worker processes", _TRAIN, minimum=0,
          flag=True),
    Param("amp", False, (bool,), "mixed precision (float16 on CUDA, bfloat16 on CPU)", _TRAIN),
    Param("checkpoint_every", None, (int,), "training steps between checkpoints inside an "
          "epoch (one process)", _TRAIN, minimum=1),
    Param("in_memory", 0, _NUMBER, "bytes of padded arrays kept from the first epoch, so later "
          "epochs shuffle in memory instead of reading; 0, or more data than this: stream",
          _TRAIN, minimum=0, flag=True),
    Param("lr_schedule", None, (str,), "learning rate per epoch: cosine (to lr_min at the last "
          "epoch), step (x lr_gamma every lr_step epochs), plateau (x lr_gamma after "
          "lr_patience epochs without improvement)", _TRAIN,
          choices=("cosine", "step", "plateau")),
    Param("warmup_epochs", 0, (int,), "epochs of linear warm-up to lr (per step) before the "
          "schedule", _TRAIN, minimum=0),
    Param("lr_min", 0.0, _NUMBER, "cosine: the learning rate at the last epoch", _TRAIN,
          minimum=0),
    Param("lr_step", 10, (int,), "step: epochs between decreases", _TRAIN, minimum=1),
    Param("lr_gamma", 0.1, _NUMBER, "step, plateau: the factor of each decrease", _TRAIN,
          minimum=1e-12),
    Param("lr_patience", 2, (int,), "plateau: epochs without improvement of the early_stopping "
          "metric (default val_loss) before a decrease", _TRAIN, minimum=0),
    Param("early_stopping", None, (dict,), "{\"metric\": \"val_loss\", \"patience\": 5, "
          "\"mode\": \"min\", \"min_delta\": 0}: stop after patience epochs without "
          "improvement; the best epoch is kept (checkpoints/best.pt) and exported", _TRAIN),
    Param("init_from", None, (str,), "run folder or checkpoint whose model weights start this "
          "run (fine-tuning)", _TRAIN),
    Param("freeze", None, _NAMES, "parameter names or glob patterns (\"0.*\", \"encoder.*\") "
          "kept fixed", _TRAIN),
    Param("hist", None, (str,), "folder in the run folder for per-class histograms of every "
          "feature branch", _OUT),
    Param("verbose", 0, (int,), "logging of rootml: 1 info, 2 debug", _OUT, minimum=0),
    Param("debug_entries", False, (bool,), "write every (file, entry) trained on per epoch "
          "into debug/", _OUT),
    Param("log", None, _NAMES, "experiment tracking: tensorboard (OUT/tensorboard), mlflow, or "
          "both (a list, or \"tensorboard,mlflow\")", _OUT, flag=True),
    Param("tracking_uri", None, (str,), "MLflow tracking URI; null: MLFLOW_TRACKING_URI, else "
          "OUT/mlruns", _OUT),
    Param("experiment", None, (str,), "MLflow experiment name; null: \"rootml\"", _OUT),
)
# fmt: on
_BY_KEY = {key: p for p in PARAMS for key in filter(None, (p.name, p.mlaas4hep))}
TRACKERS = ("tensorboard", "mlflow")

# Arguments passed to RootIterableDataset as they are.
DATASET_KEYS = (
    "tree",
    "branches",
    "exclude",
    "identifiers",
    "batch_size",
    "chunk_size",
    "shuffle",
    "seed",
    "pad_value",
    "cut",
    "aliases",
    "redirector",
    "cache",
    "cache_size",
    "sort_by",
    "nan_policy",
    "weights",
    "weight_branch",
    "label_branch",
    "balance",
    "resample",
    "resample_ratio",
    "normalize",
    "layout",
)


def defaults() -> dict[str, Any]:
    """Every parameter at its default, by rootml's name."""
    return {p.name: p.default for p in PARAMS}


def load_params(
    params: str | os.PathLike | dict[str, Any] | None, **overrides: Any
) -> dict[str, Any]:
    """Effective parameters by rootml's name: the defaults, updated by `params` (a dict or a JSON
    file, MLaaS4HEP or rootml names), then by `overrides` that are not None (command-line flags).

    Raises ConfigError naming the file (or "arguments") for an unknown key (with the closest
    known one), a key given under both its names, a value of the wrong type, choice or range;
    FileAccessError when the file cannot be read.
    """
    source = "params"
    if isinstance(params, (str, os.PathLike)):
        source = str(params)
        params = read_json(source, "params file")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"{source} must hold a JSON object of parameters, not {params!r}")
    effective = defaults()
    for keys, where in ((params or {}, source), (overrides, "the arguments")):
        seen: dict[str, str] = {}
        for key, value in keys.items():
            if value is None and keys is overrides:
                continue  # a flag not given
            param = _lookup(key, where)
            if param.name in seen:
                raise ConfigError(
                    f"{seen[param.name]!r} and {key!r} in {where} are the same parameter; "
                    "give one of them"
                )
            seen[param.name] = key
            effective[param.name] = _check(param, key, value, where)
    return _normalized(effective)


def _lookup(key: str, where: str) -> Param:
    param = _BY_KEY.get(key)
    if param is None:
        close = difflib.get_close_matches(str(key), _BY_KEY, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "`rootml train --help` lists them"
        raise ConfigError(f"unknown parameter {key!r} in {where}; {hint}")
    return param


def _check(param: Param, key: str, value: Any, where: str) -> Any:
    """`value` if it suits `param`, else ConfigError naming `key` and `where`."""
    wrong = problem(param, value)
    if wrong:
        raise ConfigError(f"parameter {key!r} in {where} {wrong}")
    return value


def problem(param: Param, value: Any) -> str | None:
    """What is wrong with `value` for `param` ("must be an integer, not '5'"), or None. Ints are
    accepted where floats are; bools are not numbers."""
    if value is None and (param.default is None or param.nullable):
        return None
    if not isinstance(value, param.kinds) or isinstance(value, bool) and bool not in param.kinds:
        return f"must be {' or '.join(_TYPE_NAMES[kind] for kind in param.kinds)}, not {value!r}"
    if param.choices and value not in param.choices:
        return f"must be one of {', '.join(repr(c) for c in param.choices)}, not {value!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low = param.minimum if param.minimum is not None else -float("inf")
        high = param.below if param.below is not None else float("inf")
        if not low <= value < high:
            bound = f"in [{low:g}, {high:g})" if param.below is not None else f">= {low:g}"
            return f"must be {bound}, not {value!r}"
    return None


def parse_text(param: Param, text: str) -> Any:
    """A command-line value of `param`: converted to its type and checked; ConfigError saying
    what is wrong ("must be an integer, not '1.5'")."""
    convert = float if float in param.kinds else param.kinds[0]
    try:
        value = convert(text)
    except ValueError:
        raise ConfigError(f"must be {_TYPE_NAMES[convert]}, not {text!r}") from None
    wrong = problem(param, value)
    if wrong:
        raise ConfigError(wrong)
    return value


_TYPE_NAMES = {
    bool: "true/false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object {...}",
}


def _normalized(params: dict[str, Any]) -> dict[str, Any]:
    """One spelling per value: nevts -1 -> None, one branch name -> a list of one."""
    if isinstance(params["nevts"], int) and params["nevts"] < 0:
        params["nevts"] = None
    for key in ("branches", "exclude", "identifiers", "target_branch", "freeze"):
        if isinstance(params[key], str):
            params[key] = [params[key]]
    if isinstance(params["log"], str):
        params["log"] = [part.strip() for part in params["log"].split(",") if part.strip()]
    unknown = sorted(set(params["log"] or ()) - set(TRACKERS))
    if unknown:
        raise ConfigError(f"parameter 'log' must name {' or '.join(TRACKERS)}, not {unknown}")
    return params


def dataset_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """The RootIterableDataset keyword arguments of effective parameters (None left out)."""
    return {key: params[key] for key in DATASET_KEYS if params.get(key) is not None}


def describe_params(width: int = 100) -> str:
    """Every params.json key with its meaning and default, by group (`rootml train --help`)."""
    lines = []
    for group in (_DATA, _PREP, _TRAIN, _OUT):
        lines.append(f"{group}:")
        for p in (p for p in PARAMS if p.group == group):
            name = p.name + (f" [{p.mlaas4hep}]" if p.mlaas4hep else "")
            choices = f" ({' | '.join(p.choices)})" if len(p.choices) > 1 else ""
            text = f"{p.meaning}{choices}; default {json.dumps(p.default)}"
            text += f"; also --{p.name.replace('_', '-')}" if p.flag else ""
            lines += textwrap.wrap(
                text,
                width,
                initial_indent=f"  {name:<30} ",
                subsequent_indent=" " * 33,
            )
    return "\n".join(lines)
