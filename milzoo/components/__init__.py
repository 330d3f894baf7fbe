"""The interfaces every component implements, and what models and losses return.

A plugin's encoder, pooling, loss, augment or dataset source subclasses one of these and declares a
``Config`` (a :class:`ComponentConfig`); :class:`MILOutput`, :class:`LossResult` and :class:`TrainState` are
what flows between them.
"""

from milzoo._lazy import attach

_EXPORTS = {
    # base
    "ComponentConfig": "base", "Component": "base", "Encoder": "base", "Pooling": "base", "Loss": "base",
    "Augment": "base", "DatasetSource": "base", "Task": "base", "BoundModel": "base", "KINDS": "base", "component_options": "base",
    # output
    "MILOutput": "output", "LossResult": "output", "TrainState": "output",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
