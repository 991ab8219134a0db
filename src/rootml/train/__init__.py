"""Training: the loop, metrics, plots, checkpoints; `rootml train` is a thin layer over it."""

from rootml.train.fit import fit, resolve_device
from rootml.train.metrics import EpochMetrics, roc_from_histograms
from rootml.train.params import load_params
from rootml.train.run import load_model_factory, run_from_params, split_ranges

__all__ = [
    "EpochMetrics",
    "fit",
    "load_model_factory",
    "load_params",
    "resolve_device",
    "roc_from_histograms",
    "run_from_params",
    "split_ranges",
]
