"""Training: the loop, metrics, plots, checkpoints; `rootml train` is a thin layer over it.

fit(model, train, val, out_dir=..., epochs=..., lr=..., device=...) trains on RootIterableDatasets;
run_from_params(files, labels, model_file, params, out_dir) is the MLaaS4HEP-style whole run.
"""

from rootml.train.checkpoint import load_checkpoint
from rootml.train.distributed import resolve_device
from rootml.train.fit import fit
from rootml.train.metrics import EpochMetrics, roc_from_histograms
from rootml.train.params import load_params
from rootml.train.run import load_model_factory, run_from_params, split_ranges

__all__ = [
    "EpochMetrics",
    "fit",
    "load_checkpoint",
    "load_model_factory",
    "load_params",
    "resolve_device",
    "roc_from_histograms",
    "run_from_params",
    "split_ranges",
]
