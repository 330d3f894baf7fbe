"""Replaying a milzoo training with another implementation of the same model: the strongest faithfulness check.

A forward pass equal to the official code's, with the same weights, says the model is the same; a whole training
that gives the same loss in every epoch says the training is too (the loss, the optimiser, the order of the bags,
every dropout mask).  :func:`replay_fold` trains another implementation's module (the official code, or a
reference written from it) from milzoo's initial weights of a fold, one bag per step, visiting the bags in
milzoo's order and drawing torch's random numbers as milzoo's trainer does, through the same description of the
run's random stream (:mod:`milzoo.train.random_stream`).  :func:`run_outputs` reads the same quantities from a
milzoo run directory, and :func:`compare` says whether the two agree: every epoch's mean training loss of every
fold, and every evaluated bag's probability, within a tolerance.  The accuracy is not the criterion: two bags
on opposite sides of 0.5 can leave it unchanged.

Run both sides in float64 (``train.precision = "fp64"``): in float32, rounding differences of 1e-7 can grow
through a training's loss spikes until a bag changes sides, which says nothing about the models.

Used by ``tests/test_torchmil_replay.py`` (a reference ABMIL written from torchmil's source) and
``benchmarks/vs_torchmil.py`` (torchmil itself)::

    from milzoo.datasets.protocols import folds_for
    from milzoo.testing.replay import compare, replay_fold, run_outputs

    recipe = milzoo.load_recipe("recipes/quickstart.toml", ["train.batch_size=1", "pooling.head=sigmoid",
                                                              "train.precision=fp64"])
    milzoo.run(recipe, out="runs/a")
    theirs = {fd.fold: replay_fold(recipe, fd, module_from, loss, optimizer) for fd in folds_for(recipe)}
    report = compare(run_outputs("runs/a", recipe), theirs)
    assert report.faithful, report.describe()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from milzoo.datasets.batch import collate_bags
from milzoo.train.random_stream import FoldStream, draw_loader_seed, evaluation

__all__ = ["FoldOutputs", "Agreement", "compare", "replay_fold", "run_outputs"]


@dataclass
class FoldOutputs:
    """One fold of a training: the mean training loss of every epoch, and each evaluated bag's probability of
    the positive class after the last epoch (by bag id)."""

    train_loss: list[float]
    probs: dict[str, float]


def _sigmoid_of_one_logit(output: Tensor) -> float:
    return float(torch.sigmoid(output.reshape(())))


def replay_fold(recipe, fold, module_from: Callable[[nn.Module], nn.Module],
                loss: Callable[[Tensor, Tensor], Tensor],
                optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
                probability: Callable[[Tensor], float] = _sigmoid_of_one_logit, split: str = "test") -> FoldOutputs:
    """Train ``module_from(model)`` on ``fold`` (a :class:`~milzoo.datasets.protocols.FoldData`) as milzoo's
    trainer trains ``recipe``'s model, and evaluate it on the fold's ``split``.

    ``model`` is milzoo's model of the fold with its initial weights; ``module_from`` returns the other
    implementation with those weights copied in, taking a ``[1, N, *instance shape]`` bag.  ``loss(output, y)``
    is its loss on one bag (``y`` a one-element tensor of the label, in the model's float type),
    ``optimizer(params)`` its optimiser, ``probability(output)`` the positive-class probability it predicts.
    Instances are standardised as milzoo's model does (its standardiser, fitted on the fold's training bags).
    """
    tc = recipe.root.train
    if tc.batch_size != 1:
        raise ValueError(f"a replay takes one bag per step; the recipe has train.batch_size = {tc.batch_size!r}")
    train = fold.train
    stream = FoldStream(recipe.root.seed, fold.fold)
    stream.seed_model()
    from milzoo.model.build import build_model

    model = build_model(recipe, train.instance_shape, train.num_classes, train.class_names)
    with torch.random.fork_rng(devices=[]):  # building the other module (its own initialisation) draws nothing
        module = module_from(model)  # from the training's stream
    dtype = torch.float64 if tc.precision == "fp64" else torch.float32
    model.to(dtype)
    module.to(dtype)  # milzoo builds in float32 and then doubles its model: the same initial values
    if model.standardizer is not None:
        model.standardizer.fit(train.get_bag(i).x for i in range(len(train)))

    def instances(bag) -> Tensor:
        x = bag.x.to(dtype)
        return (model.standardizer(x.flatten(1)).view_as(x) if model.standardizer is not None else x).unsqueeze(0)

    with torch.no_grad():
        bags = [(instances(b), torch.tensor([float(b.y)], dtype=dtype)) for b in map(train.get_bag, range(len(train)))]
    opt = optimizer(module.parameters())
    curve = []
    for epoch in range(tc.epochs):
        order = stream.epoch_order(epoch, len(bags))
        draw_loader_seed()
        module.train()
        total = 0.0
        for i in order:
            x, y = bags[i]
            value = loss(module(x), y)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            total += float(value.detach())
        curve.append(total / len(order))
    ds = fold.evals[split]
    module.eval()
    with evaluation(), torch.no_grad():
        probs = {str(b.bag_id): probability(module(instances(b))) for b in map(ds.get_bag, range(len(ds)))}
    return FoldOutputs(curve, probs)


def run_outputs(run_dir: str | Path, recipe, split: str = "test") -> dict[int, FoldOutputs]:
    """Fold -> :class:`FoldOutputs` of a finished milzoo run: training losses from ``metrics.jsonl``, and the
    positive-class probabilities of ``split`` recomputed from each fold's ``last`` checkpoint at full precision
    (the predictions CSV keeps 6 significant digits)."""
    from milzoo.checkpoint import load_model
    from milzoo.datasets.protocols import folds_for
    from milzoo.report.common import read_metrics

    run_dir = Path(run_dir)
    curves: dict[int, list[float]] = {}
    for rec in read_metrics(run_dir / "metrics.jsonl"):
        if rec.get("split") == "train":
            curves.setdefault(int(rec.get("fold", 0)), []).append(rec["loss"])
    out = {}
    for fd in folds_for(recipe):
        model = load_model(run_dir / f"fold-{fd.fold:02d}" / "last").eval()
        ds = fd.evals[split]
        with evaluation(), torch.no_grad():
            probs = {str(b.bag_id): float(model.task.predict(model(collate_bags([b])))[0, 1])
                     for b in map(ds.get_bag, range(len(ds)))}
        out[fd.fold] = FoldOutputs(curves[fd.fold], probs)
    return out


@dataclass
class Agreement:
    """How two trainings of the same folds compare (:func:`compare`); ``faithful`` when everything agrees."""

    loss_tol: float
    prob_tol: float
    folds: dict[int, dict] = field(default_factory=dict)  # per fold: epochs, equal epochs, first departure, max diff
    bags: int = 0
    max_prob_diff: float = 0.0
    prob_departures: list[str] = field(default_factory=list)  # bags whose probabilities differ beyond prob_tol
    flipped: list[str] = field(default_factory=list)  # bags on opposite sides of 0.5
    accuracy_difference: float = 0.0  # reported, not the criterion

    @property
    def faithful(self) -> bool:
        return bool(self.folds) and not self.prob_departures and all(
            f["epochs_equal"] == f["epochs"] for f in self.folds.values())

    def describe(self) -> list[str]:
        """One line per fold and one for the probabilities."""
        lines = []
        for fold, f in self.folds.items():
            first = "" if f["first_departure"] is None else f", first departs in epoch {f['first_departure']}"
            lines.append(f"fold {fold}: training loss equal within {self.loss_tol:g} in {f['epochs_equal']} of "
                         f"{f['epochs']} epochs (largest difference {f['max_diff']:.1e}{first})")
        lines.append(f"test probabilities: {self.bags - len(self.prob_departures)} of {self.bags} bags within "
                     f"{self.prob_tol:g} (largest difference {self.max_prob_diff:.1e}); {len(self.flipped)} on the "
                     f"other side of 0.5{': ' + ', '.join(self.flipped) if self.flipped else ''}; accuracy "
                     f"difference {self.accuracy_difference:.4f} (reported, not the criterion)")
        return lines

    def as_dict(self) -> dict:
        return {"faithful": self.faithful, "loss_tol": self.loss_tol, "prob_tol": self.prob_tol,
                "folds": {str(k): v for k, v in self.folds.items()}, "bags": self.bags,
                "max_prob_diff": self.max_prob_diff, "prob_departures": self.prob_departures,
                "flipped": self.flipped, "accuracy_difference": self.accuracy_difference}


def compare(ours: dict[int, FoldOutputs], theirs: dict[int, FoldOutputs], loss_tol: float = 1e-9,
            prob_tol: float = 1e-9, labels: dict[str, int] | None = None) -> Agreement:
    """Every fold's training loss, epoch by epoch, and every evaluated bag's probability, of two trainings.

    The defaults are float64 tolerances.  ``labels`` (bag id -> 0/1) adds the accuracy difference to the report.
    """
    if set(ours) != set(theirs):
        raise ValueError(f"the two trainings have different folds: {sorted(ours)} and {sorted(theirs)}")
    agreement = Agreement(loss_tol, prob_tol)
    accuracies: list[tuple[float, float]] = []  # per fold, as a run's summary averages them
    for fold in sorted(ours):
        a, b = ours[fold], theirs[fold]
        if len(a.train_loss) != len(b.train_loss):
            raise ValueError(f"fold {fold}: {len(a.train_loss)} epochs against {len(b.train_loss)}")
        diffs = [abs(x - y) for x, y in zip(a.train_loss, b.train_loss)]
        bad = [e for e, d in enumerate(diffs) if not d <= loss_tol]  # a NaN is a departure too
        agreement.folds[fold] = {"epochs": len(diffs), "epochs_equal": len(diffs) - len(bad),
                                 "first_departure": bad[0] if bad else None, "max_diff": max(diffs, default=0.0)}
        if set(a.probs) != set(b.probs):
            raise ValueError(f"fold {fold}: the two trainings evaluated different bags")
        for bid, p in a.probs.items():
            q = b.probs[bid]
            agreement.bags += 1
            d = abs(p - q)
            agreement.max_prob_diff = max(agreement.max_prob_diff, d)
            if not d <= prob_tol:
                agreement.prob_departures.append(f"fold {fold} bag {bid}: {p:.4f} vs {q:.4f}")
            if (p > 0.5) != (q > 0.5):
                agreement.flipped.append(f"fold {fold} bag {bid}: {p:.4f} vs {q:.4f}")
        if labels is not None and a.probs:
            accuracies.append(tuple(sum((probs[bid] > 0.5) == bool(labels[bid]) for bid in probs) / len(probs)
                                    for probs in (a.probs, b.probs)))
    if accuracies:
        agreement.accuracy_difference = abs(sum(x - y for x, y in accuracies)) / len(accuracies)
    return agreement
