"""Reading and planning: files, entries, work units, shards. Knows files, not features."""

from rootml._lazy import lazy_exports

__all__ = lazy_exports(
    __name__,
    {
        "RootIterableDataset": "rootml.datasets.dataset",
        "fit_histograms": "rootml.datasets._fit",
        "fit_specs": "rootml.datasets._fit",
    },
)
