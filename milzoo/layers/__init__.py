"""Tensor building blocks that poolings share: masked operations, bag classifiers, float types."""

from milzoo._lazy import attach

_EXPORTS = {
    # heads
    "ClassifierKind": "heads", "kaiming_nobias_bound": "heads", "bag_classifier": "heads",
    # masking
    "masked_softmax": "masking", "masked_mean": "masking", "masked_max": "masking", "attention_pool": "masking",
    "bag_lengths": "masking", "is_padded": "masking", "real_rows": "masking",
    # precision
    "at_least_float32": "precision",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
