"""Reading and planning: files, entries, work units, shards. Knows files, not features."""

from rootml.datasets.dataset import RootIterableDataset

__all__ = ["RootIterableDataset"]
