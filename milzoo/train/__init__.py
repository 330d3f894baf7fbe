"""Training one fold: the :class:`Trainer` and what it uses (settings, optimisers, averaging, distributed
training, progress).

The trainer's public verbs sit in ``trainer``; the work underneath is private: ``_epoch`` (one training epoch,
:class:`LossSums`), ``_evaluate`` (predictions, metrics, selection, the fold's result), ``_feed`` (batches on
the device) and ``_precision`` (autocast and gradient scaling of ``train.precision``).
"""

from milzoo._lazy import attach

_EXPORTS = {
    # trainer (its private modules: _epoch, _evaluate, _feed, _precision)
    "Trainer": "trainer", "LossSums": "_epoch",
    # averaging
    "WeightAverager": "averaging",
    # distributed
    "Distributed": "distributed", "maybe_distributed": "distributed", "requested": "distributed",
    "split_bounds": "distributed", "free_port": "distributed",
    # progress
    "EpochProgress": "progress", "RunProgress": "progress", "RunObserver": "progress", "Observers": "progress",
    # the random stream of a run, described once (the trainer and the replays draw through it)
    "FoldStream": "random_stream",
    # measuring a trained model again, as its run did
    "measure": "measure",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
