"""Training one fold: the :class:`Trainer` and what it uses (settings, optimisers, averaging, distributed
training, progress)."""

from milzoo._lazy import attach

_EXPORTS = {
    # trainer
    "LossSums": "trainer", "Trainer": "trainer",
    # averaging
    "WeightAverager": "averaging",
    # distributed
    "Distributed": "distributed", "maybe_distributed": "distributed", "requested": "distributed",
    "split_bounds": "distributed", "free_port": "distributed",
    # progress
    "EpochProgress": "progress",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
