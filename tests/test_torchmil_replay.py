"""ABMIL trained by milzoo equals torchmil's ABMIL trained from the same start: the small replay.

benchmarks/vs_torchmil.py replays all 10 folds of the quickstart for 40 epochs with torchmil itself; this is
its small version, in every ``make test``: 2 folds, 3 epochs, float64, against a reference ABMIL written from
torchmil 1.0.2's source (``torchmil/models/abmil.py``, ``torchmil/nn/attention/attention_pool.py``; torchmil
brings pandas, h5py, tensordict and torchmetrics, too much for a test dependency).  The replay draws torch's
random numbers through milzoo.train.random_stream, as the trainer does; a trainer that changes its random
stream anywhere else fails here (the last test shows it does).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import milzoo
from milzoo.datasets.protocols import folds_for
from milzoo.testing.replay import compare, replay_fold, run_outputs
from milzoo.train import _evaluate

OVERRIDES = ["train.batch_size=1", "pooling.head=sigmoid", "train.precision=fp64", "train.epochs=3",
             "protocol.folds=2", "train.progress=false"]


class ReferenceABMIL(nn.Module):
    """torchmil's ``ABMIL(in_shape, att_dim, feat_ext)`` with ``gated=False``, ``att_act="tanh"``: the feature
    extractor, attention values ``fc2(tanh(fc1(X)))`` (``fc2`` without a bias), a masked softmax over the
    instances, ``z = X^T s``, and one logit from ``classifier(z)``; its loss is ``BCEWithLogitsLoss``."""

    def __init__(self, feat_ext: nn.Module, feat_dim: int, att_dim: int):
        super().__init__()
        self.feat_ext = feat_ext
        self.fc1 = nn.Linear(feat_dim, att_dim)
        self.fc2 = nn.Linear(att_dim, 1, bias=False)
        self.classifier = nn.Linear(feat_dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.feat_ext(x)  # [B, N, D]
        if mask is None:
            mask = torch.ones(x.shape[:2], device=x.device)
        f = self.fc2(torch.tanh(self.fc1(x)))  # [B, N, 1]
        s = torch.softmax(f.masked_fill(mask.unsqueeze(-1) == 0, -math.inf), dim=1)
        z = torch.bmm(x.transpose(1, 2), s).squeeze(-1)  # [B, D]
        return self.classifier(z).squeeze(-1)  # [B]


def reference_from(model) -> ReferenceABMIL:
    """The reference with milzoo's initial weights: the quickstart's MLP (Linear, ReLU, Dropout, twice) as the
    feature extractor, milzoo's attention and classifier (torchmil's ``fc2`` has no bias; a softmax ignores it)."""
    enc, pool = model.encoder.net, model.pooling
    feat_ext = nn.Sequential(nn.Linear(166, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 128), nn.ReLU(),
                             nn.Dropout(0.2))
    ref = ReferenceABMIL(feat_ext, 128, pool.attn_V.out_features)
    with torch.no_grad():
        for i in (0, 3):
            feat_ext[i].load_state_dict(enc[i].state_dict())
        ref.fc1.load_state_dict(pool.attn_V.state_dict())
        ref.fc2.weight.copy_(pool.attn_w.weight)
        ref.classifier.load_state_dict(pool.classifier.state_dict())
    return ref


def replayed(recipe) -> dict:
    lr, wd = recipe.root.optim.lr, recipe.root.optim.weight_decay
    return {fd.fold: replay_fold(recipe, fd, reference_from, nn.BCEWithLogitsLoss(),
                                 lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=wd, foreach=True))
            for fd in folds_for(recipe)}


@pytest.fixture(scope="module")
def recipe():
    return milzoo.load_recipe("recipes/quickstart.toml", OVERRIDES)


@pytest.fixture(scope="module")
def reference(recipe):
    return replayed(recipe)


def test_milzoo_abmil_trains_as_torchmils_in_every_epoch(recipe, reference, tmp_path):
    milzoo.run(recipe, out=tmp_path / "run")
    ours = run_outputs(tmp_path / "run", recipe)
    report = compare(ours, reference)
    assert [f["epochs"] for f in report.folds.values()] == [3, 3]
    assert report.bags == sum(len(fd.evals["test"]) for fd in folds_for(recipe))
    assert report.faithful, "\n".join(report.describe())
    # and not because nothing moved: the losses change from epoch to epoch
    assert all(len(set(o.train_loss)) == 3 for o in ours.values())


def test_the_replay_notices_a_trainer_whose_evaluation_draws_from_the_training_stream(recipe, reference, tmp_path,
                                                                                     monkeypatch):
    """The change that broke benchmarks/vs_torchmil.py, undone on purpose: evaluation on the training's random
    stream (a DataLoader iterator draws its seed) moves every later dropout mask; the replay must say so."""
    import contextlib

    monkeypatch.setattr(_evaluate.random_stream, "evaluation", lambda device="cpu": contextlib.nullcontext())
    milzoo.run(recipe, out=tmp_path / "run")
    report = compare(run_outputs(tmp_path / "run", recipe), reference)
    assert not report.faithful
    assert {f["first_departure"] for f in report.folds.values()} == {1}  # epoch 0 is still equal


def test_compare_reports_what_an_accuracy_would_hide():
    """Two bags that change sides in opposite directions leave the accuracy as it was; the comparison fails."""
    from milzoo.testing.replay import FoldOutputs

    ours = {0: FoldOutputs([0.7, 0.5], {"a": 0.2, "b": 0.8})}
    theirs = {0: FoldOutputs([0.7, 0.5], {"a": 0.8, "b": 0.2})}
    report = compare(ours, theirs, labels={"a": 1, "b": 1})
    assert report.accuracy_difference == 0 and not report.faithful and len(report.flipped) == 2
    nan = compare({0: FoldOutputs([0.7, float("nan")], {})}, {0: FoldOutputs([0.7, 0.5], {})})
    assert nan.folds[0]["first_departure"] == 1 and not nan.faithful
