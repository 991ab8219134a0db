"""Training: the loop, metrics, plots, checkpoints; `rootml train` is a thin layer over it.

fit(model, train, val, out_dir=..., epochs=..., lr=..., device=...) trains on RootIterableDatasets
(objective=Classification(...) or Regression(...), schedule=LRSchedule(...),
early_stopping=EarlyStopping(...), in_memory=bytes); evaluate(...) scores a test set once;
run_from_params(files, labels, model_file, params, out_dir) is the MLaaS4HEP-style whole run
(splits and k-fold: rootml.train.splits);
train_with_ray(...) runs it in Ray Train's TorchTrainer (needs the `ray` extra).
Names are imported on first use: rootml.train.params (the params.json table) needs no torch.
"""

from rootml._lazy import lazy_exports

__all__ = lazy_exports(
    __name__,
    {
        "Classification": "rootml.train.objectives",
        "EarlyStopping": "rootml.train.schedule",
        "EpochMetrics": "rootml.train.metrics",
        "LRSchedule": "rootml.train.schedule",
        "Regression": "rootml.train.objectives",
        "RegressionMetrics": "rootml.train.regression",
        "evaluate": "rootml.train.fit",
        "fit": "rootml.train.fit",
        "load_checkpoint": "rootml.train.checkpoint",
        "load_model_factory": "rootml.train.model",
        "load_params": "rootml.train.params",
        "resolve_device": "rootml.train.distributed",
        "roc_from_histograms": "rootml.train.metrics",
        "run_from_params": "rootml.train.run",
        "split_entries": "rootml.train.splits",
        "split_ranges": "rootml.train.splits",
        "train_with_ray": "rootml.train.ray_train",
    },
)
