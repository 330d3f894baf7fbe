"""The interfaces every component implements, and what models and losses return.

A plugin's encoder, pooling, loss, augment, dataset source, task or experiment logger subclasses one of these and declares a
``Config`` (a :class:`ComponentConfig`); :class:`MILOutput`, :class:`LossResult` and :class:`TrainState` are
what flows between them.  A component that downloads files registers a :class:`Download` (``milzoo data fetch``)
and downloads inside :func:`downloading`.
"""

from milzoo._lazy import attach

_EXPORTS = {
    # base
    "ComponentConfig": "base", "Component": "base", "Encoder": "base", "Pooling": "base", "Loss": "base",
    "Augment": "base", "DatasetSource": "base", "Task": "base", "BoundModel": "base", "KINDS": "base", "component_options": "base",
    "Logger": "base", "pool_bags": "base",
    # output
    "MILOutput": "output", "LossResult": "output", "TrainState": "output", "RunInfo": "output",
    # download
    "Download": "download", "downloading": "download", "fetch_command": "download",
    "is_network_error": "download", "download_failed_message": "download",
    # converter (weights of another toolkit -> a milzoo model: `milzoo convert`)
    "Converter": "converter", "ConversionPlan": "converter", "tensor_shape": "converter",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
