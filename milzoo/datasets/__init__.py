"""Dataset base classes and the built-in dataset sources."""

from milzoo.datasets.base import BagListDataset, MILDataset, MILSubset

__all__ = ["MILDataset", "BagListDataset", "MILSubset"]
