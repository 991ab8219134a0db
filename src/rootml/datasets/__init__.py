"""Reading and planning: files, entries, work units, shards. Knows files, not features."""

from rootml.datasets._fit import fit_histograms, fit_specs
from rootml.datasets.dataset import RootIterableDataset

__all__ = ["RootIterableDataset", "fit_histograms", "fit_specs"]
