"""Reading and planning: files, entries, work units, shards. Knows files, not features."""

from rootml._lazy import lazy_exports

__all__ = lazy_exports(
    __name__,
    {
        "RootIterableDataset": "rootml.datasets.dataset",
        "Selection": "rootml.datasets.selection",
        "fit_histograms": "rootml.datasets._fit",
        "fit_specs": "rootml.datasets._fit",
        "inspect_file": "rootml.datasets.contents",
        "match_names": "rootml.datasets._files",
        "resolve_files": "rootml.datasets._files",
    },
)
