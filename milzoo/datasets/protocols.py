"""Evaluation protocols: which bags train, validate and test each fold.

- ``holdout``: train on the dataset's ``train`` split; evaluate every other
  split (``test``, ...).  ``val_fraction`` carves a stratified validation set
  from the training bags unless the dataset has a ``val`` split.
- ``cv``: stratified k-fold cross-validation over the ``all`` (or ``train``)
  split; the held-out fold is the test set.  ``repeats`` > 1 repeats it with
  other fold seeds.  Groups (e.g. patients) never straddle folds.
- ``cv_ensemble``: k-fold CV on the ``train`` split where the held-out fold
  *validates* (selection, threshold, early stopping) and the separate ``test``
  split is predicted by every fold model, then combined by majority vote (the
  DSMIL/PSMIL whole-slide protocol).

Groups are kept apart everywhere: k-fold splits and validation carve-outs are drawn by group, and
``make_folds`` refuses any fold where a group has bags in two of its splits (train, val, test, or a split the
dataset brings), with a :class:`~milzoo.errors.DataError` naming the groups.

``folds_for(recipe)`` is the one way from a recipe to its folds (dataset source -> splits -> folds): runs,
reports and plugins' commands rebuild exactly the bags a run trained and evaluated on through it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from milzoo.datasets.base import MILDataset
from milzoo.datasets.checks import check_groups_disjoint
from milzoo.errors import UserError
from milzoo.registry import get_component
from milzoo.train import random_stream

log = logging.getLogger(__name__)


@dataclass
class FoldData:
    """What one training run sees: the training bags, an optional validation set, and splits to evaluate."""

    fold: int
    train: MILDataset
    val: MILDataset | None
    evals: dict[str, MILDataset] = field(default_factory=dict)  # split name -> dataset (val included)


def _stratify_ok(labels: np.ndarray, n_splits: int) -> bool:
    _, counts = np.unique(labels, return_counts=True)
    return counts.min() >= n_splits


def stratified_kfold(labels: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, labels)`` of scikit-learn, in
    numpy (its algorithm: each class's bags dealt to folds in blocks sized round-robin, the blocks shuffled
    by ``RandomState(seed)`` class by class in order of first appearance), without importing scikit-learn
    (a second or more of every run).  ``tests/test_metrics_sklearn.py`` checks that the folds are the same.
    Every class must have at least ``k`` bags."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    _, class_perm = np.unique(first, return_inverse=True)
    encoded = class_perm[inverse.reshape(-1)]  # classes numbered by first appearance
    n_classes = len(first)
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::k], minlength=n_classes) for i in range(k)])
    test_folds = np.empty(len(labels), dtype="i")
    for c in range(n_classes):
        folds_for_class = np.arange(k).repeat(allocation[:, c])
        rng.shuffle(folds_for_class)
        test_folds[encoded == c] = folds_for_class
    indices = np.arange(len(labels))
    return [(indices[test_folds != i], indices[test_folds == i]) for i in range(k)]


def kfold_indices(labels: np.ndarray, groups: np.ndarray | None, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (and, with groups, grouped) k-fold splits; asserts no group leaks."""
    n = len(labels)
    if n < k:
        raise UserError(f"protocol.folds = {k} but the dataset has only {n} bags; lower protocol.folds.")
    X = np.zeros((n, 1))
    if groups is not None and len(np.unique(groups)) < n:
        n_groups = len(np.unique(groups))
        if n_groups < k:
            raise UserError(
                f"protocol.folds = {k} but the bags come from only {n_groups} groups (e.g. patients), and the "
                "bags of a group never straddle folds; lower protocol.folds."
            )
        _, counts = np.unique(labels, return_counts=True)
        from sklearn.model_selection import StratifiedGroupKFold

        if counts.max() >= k:
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        else:  # no class has k bags: StratifiedGroupKFold refuses, so group without stratifying
            from sklearn.model_selection import GroupKFold

            splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = list(splitter.split(X, labels, groups))
    elif _stratify_ok(labels, k):
        folds = stratified_kfold(labels, k, seed)
    else:
        from sklearn.model_selection import KFold

        folds = list(KFold(n_splits=k, shuffle=True, random_state=seed).split(X))
    if groups is not None:
        assert_no_group_leak(folds, np.asarray(groups))
    return [(np.sort(tr), np.sort(te)) for tr, te in folds]


def warn_unstratified(labels: np.ndarray, k: int) -> None:
    """Say why some held-out folds cannot hold every class (so their AUC is undefined)."""
    classes, counts = np.unique(labels, return_counts=True)
    smallest = int(counts.min())
    if k >= len(labels):
        what = (f"protocol.folds = {k} is leave-one-out ({len(labels)} bags): every held-out fold holds one bag, "
                "so per-fold AUC is undefined and only accuracy is reported per fold")
    else:
        what = (f"protocol.folds = {k} but class {int(classes[counts.argmin()])} has only {smallest} bag(s): the "
                "folds cannot be stratified, and held-out folds without both classes have an undefined AUC "
                "(the summary counts them)")
    log.warning("%s. Use protocol.folds <= %d for stratified folds with an AUC in every fold.", what, smallest)


def check_trainable(folds: list[FoldData]) -> None:
    """Refuse folds whose training bags hold a single class: such a model predicts it everywhere and its
    accuracy on a test split of that class would read as perfect."""
    for data in folds:
        present = np.unique(data.train.strata)
        if len(present) < 2:
            if not np.issubdtype(np.asarray(data.train.labels).dtype, np.integer):
                raise UserError(
                    f"the training bags of fold {data.fold} all fall in one stratum of their labels (e.g. no "
                    "survival event, or one value of a regression target): nothing can be learnt from them. Check "
                    "the labels, or lower protocol.folds (or protocol.val_fraction).")
            name = data.train.class_names[int(present[0])] if len(present) else "?"
            raise UserError(
                f"the training bags of fold {data.fold} all have the class {name!r} ({len(data.train)} bags); a "
                "model trained on one class learns nothing. Check the data's labels, or lower protocol.folds "
                "(or protocol.val_fraction) so every training set holds every class."
            )


def assert_no_group_leak(folds, groups: np.ndarray) -> None:
    for tr, te in folds:
        shared = set(groups[tr]) & set(groups[te])
        if shared:
            raise AssertionError(f"group leak between train and held-out fold: {sorted(shared)[:5]}")


def carve_validation(ds: MILDataset, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``ds`` into (train, val) positions, stratified (grouped when groups exist: a group, e.g. a
    patient, is all in train or all in val).

    With groups, the validation set is the first of ``round(1 / fraction)`` grouped folds (as many as there
    are groups when there are fewer: one group then validates)."""
    n = len(ds)
    labels = ds.strata
    n_val = max(1, int(round(fraction * n)))
    groups = ds.groups
    if groups is not None and len(np.unique(groups)) < n:
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise UserError(
                f"protocol.val_fraction = {fraction} but the {n} training bags come from a single group (e.g. one "
                "patient), which cannot be split between training and validation; set protocol.val_fraction = 0 "
                "or give the dataset more groups."
            )
        k = min(n_groups, max(2, int(round(1 / fraction))))
        tr, va = kfold_indices(labels, groups, k, seed)[0]
        assert_no_group_leak([(tr, va)], np.asarray(groups))
        return tr, va
    from sklearn.model_selection import train_test_split

    strat = labels if _stratify_ok(labels, 2) and n_val >= len(np.unique(labels)) else None
    tr, va = train_test_split(np.arange(n), test_size=n_val, stratify=strat, random_state=seed)
    return np.sort(tr), np.sort(va)


def _pool(splits: dict[str, MILDataset], *names: str) -> MILDataset:
    for n in names:
        if n in splits:
            return splits[n]
    raise UserError(
        f"the dataset provides the splits {sorted(splits)} but this protocol needs one of {list(names)}; "
        "choose another protocol.kind."
    )


def build_dataset(recipe) -> dict[str, MILDataset]:
    """The splits (``train``, ``test``, ``all``, ...) of the recipe's ``[data]`` source, loaded."""
    source = get_component("dataset", recipe.root.data.name)
    return source(recipe.components["data"]).load()


def folds_for(recipe) -> list[FoldData]:
    """The folds of a validated recipe: its dataset loaded and split by its protocol with its seed.

    torch is seeded with the recipe's seed first, as a run does, so rebuilding the folds of a run (a report, a
    plugin's command) gives the bags it trained and evaluated on even for a source that draws from torch.
    """
    random_stream.seed_folds(recipe.root.seed)
    return make_folds(recipe.root.protocol, build_dataset(recipe), recipe.root.seed)


def fold_count(protocol) -> int:
    """How many folds ``protocol`` defines (the number :func:`make_folds` returns), without any data."""
    if protocol.kind == "holdout":
        return 1
    if protocol.kind == "cv":
        return protocol.folds * protocol.repeats
    return protocol.folds  # cv_ensemble


def make_folds(protocol, splits: dict[str, MILDataset], seed: int) -> list[FoldData]:
    """The folds a protocol defines over the dataset's splits (refused when a training set has one class)."""
    folds = _make_folds(protocol, splits, seed)
    assert len(folds) == fold_count(protocol), (protocol.kind, len(folds))
    check_trainable(folds)
    check_separated(folds)
    return folds


def check_separated(folds: list[FoldData]) -> None:
    """Refuse folds where a group (a patient) has bags in two of a fold's splits: training and any split it
    is evaluated on, or validation and test.  The folds the protocols draw are grouped already; this
    catches splits a dataset brings (a ``test`` or ``val`` split that shares patients with ``train``)."""
    for data in folds:
        named = {"train": data.train.groups}
        named.update({name: ds.groups for name, ds in data.evals.items() if ds is not data.train})
        if data.val is not None and "val" not in named:
            named["val"] = data.val.groups
        check_groups_disjoint(named, f"fold {data.fold}")


def dataset_info(folds: list[FoldData]) -> dict | None:
    """What the dataset says a run should record of it (its ``data_info`` dict: e.g. the slides source's bag
    rule, patient column, split and patch sizes), found on the first fold's training bags or the datasets
    they are a subset of; None when the dataset says nothing.  JSON-able, for the run's record."""
    if not folds:
        return None
    ds = folds[0].train
    while ds is not None:
        info = getattr(ds, "data_info", None)
        if isinstance(info, dict) and info:
            return dict(info)
        ds = getattr(ds, "parent", None)
    return None


def _make_folds(protocol, splits: dict[str, MILDataset], seed: int) -> list[FoldData]:
    extra_eval = lambda used: {n: d for n, d in splits.items() if n not in used}  # noqa: E731
    wanted = protocol.eval_splits

    def pick(evals: dict[str, MILDataset]) -> dict[str, MILDataset]:
        if wanted is None:
            return evals
        missing = [w for w in wanted if w not in evals]
        if missing:
            raise UserError(f"protocol.eval_splits names {missing}, which this protocol does not provide; "
                            f"available: {sorted(evals)}.")
        return {n: evals[n] for n in wanted if n in evals or n == "val"}

    if protocol.kind == "holdout":
        train = _pool(splits, "train", "all")
        val = splits.get("val")
        if val is None and protocol.val_fraction > 0:
            tr, va = carve_validation(train, protocol.val_fraction, seed)
            train, val = train.subset(tr), train.subset(va)
        evals = {}
        if val is not None:
            evals["val"] = val
        evals.update(extra_eval({"train", "all", "val"}))
        return [FoldData(0, train, val, pick(evals))]

    if protocol.kind == "cv":
        pool = _pool(splits, "all", "train")
        if not _stratify_ok(pool.strata, protocol.folds) and len(pool) >= protocol.folds:
            warn_unstratified(pool.strata, protocol.folds)
        folds = []
        for r in range(protocol.repeats):
            for i, (tr, te) in enumerate(kfold_indices(pool.strata, pool.groups, protocol.folds, seed + r)):
                train = pool.subset(tr)
                val = None
                if protocol.val_fraction > 0:
                    a, b = carve_validation(train, protocol.val_fraction, seed + 7919 * (i + 1))
                    train, val = pool.subset(tr[a]), pool.subset(tr[b])
                evals = {"val": val} if val is not None else {}
                evals["test"] = pool.subset(te)
                evals.update(extra_eval({"all", "train", "test", "val"}))
                folds.append(FoldData(r * protocol.folds + i, train, val, pick(evals)))
        return folds

    # cv_ensemble
    pool = _pool(splits, "train")
    if not _stratify_ok(pool.strata, protocol.folds) and len(pool) >= protocol.folds:
        warn_unstratified(pool.strata, protocol.folds)
    test = splits.get("test")
    folds = []
    for i, (tr, va) in enumerate(kfold_indices(pool.strata, pool.groups, protocol.folds, seed)):
        evals = {"val": pool.subset(va)}
        if test is not None:
            evals["test"] = test
        evals.update(extra_eval({"train", "test", "val"}))
        folds.append(FoldData(i, pool.subset(tr), pool.subset(va), pick(evals)))
    return folds
