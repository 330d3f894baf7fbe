"""Combining fold models on a shared test set (the DSMIL/PSMIL whole-slide protocol)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from milzoo.datasets.batch import MILBatch
from milzoo.errors import CheckpointError
from milzoo.metrics import bag_metrics
from milzoo.model.mil import MILModel, Predicts
from milzoo.model.sharing import SavesPretrained
from milzoo.components.output import MILOutput

log = logging.getLogger(__name__)

#: the most members an ensemble loaded from a folder (Hub folder, run directory) may have: a cross-validation
#: ensemble has one per fold (5 or 10); a folder listing more is damaged or hostile
MAX_MEMBERS = 64


def fold_predictions(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class predictions of one model: thresholded positive probability (binary) or argmax."""
    if probs.shape[1] == 2 and threshold is not None:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(1)


def majority_vote(preds: np.ndarray, mean_probs: np.ndarray) -> np.ndarray:
    """Per-bag majority over models (``preds`` is ``[models, bags]``).

    Ties (e.g. 2 vs 2 of 4 models, or a three-way split) go to the class with the
    highest mean probability among the tied classes.
    """
    n_models, n_bags = preds.shape
    k = mean_probs.shape[1]
    out = np.empty(n_bags, dtype=int)
    for b in range(n_bags):
        counts = np.bincount(preds[:, b], minlength=k)
        tied = np.flatnonzero(counts == counts.max())
        out[b] = tied[np.argmax(mean_probs[b, tied])] if len(tied) > 1 else tied[0]
    return out


def ensemble_metrics(probs_per_model: list[np.ndarray], thresholds: list[float | None], y_true: np.ndarray) -> dict:
    """ACC/F1 of the majority vote; AUC of the mean probability (docs/methods.md 7.8 [choice])."""
    probs = np.stack(probs_per_model)  # [models, bags, k]
    mean = probs.mean(0)
    preds = np.stack([fold_predictions(p, t) for p, t in zip(probs_per_model, thresholds)])
    vote = majority_vote(preds, mean)
    # accuracy/F1 from the vote: feed one-hot "probabilities" of the vote to bag_metrics
    onehot = np.eye(mean.shape[1])[vote]
    m_vote = bag_metrics(y_true, onehot)
    m_mean = bag_metrics(y_true, mean)
    return {"acc": m_vote["acc"], "f1": m_vote["f1"], "auc": m_mean["auc"], "n_models": len(probs_per_model),
            "note": "acc/f1 from the majority vote of thresholded fold models; auc from their mean probability"}


class Ensemble(Predicts, SavesPretrained, nn.Module):
    """Several fold models used as one (the cross-validation ensemble of the WSI protocol).

    ``forward`` returns a :class:`MILOutput` whose ``probs`` are the mean of the
    members' bag probabilities (``bag_logits`` are their log, so softmax gives
    the same) and whose ``extras`` hold ``vote`` (``[B]``, the majority vote of
    the members' predictions, each member thresholded at its own validation
    threshold for binary tasks; ties go to the highest mean probability),
    ``member_probs`` (``[M, B, k]``) and ``member_preds`` (``[M, B]``).
    ``attention`` and instance probabilities are the members' means when every
    member provides them.

    ``ensemble.save_pretrained(dir)``, ``Ensemble.from_pretrained(ref)`` and ``ensemble.push_to_hub("org/name")``
    share it as one Hub folder with a ``members/`` folder per member (docs/hub.md).
    """

    def __init__(self, members: Sequence[MILModel], thresholds: Sequence[float | None] | None = None,
                 combine: str = "vote", names: Sequence[str] | None = None):
        super().__init__()
        if not members:
            raise CheckpointError("an ensemble needs at least one member model.")
        if combine != "vote":
            raise CheckpointError(
                f"this ensemble combines its members by {combine!r}, which this milzoo does not know (only 'vote'); "
                "upgrade milzoo (`pip install -U milzoo`)."
            )
        first = members[0]
        for i, m in enumerate(members[1:], 1):
            if m.num_classes != first.num_classes or tuple(m.in_shape) != tuple(first.in_shape):
                raise CheckpointError(
                    f"ensemble member {i} has {m.num_classes} classes and input {tuple(m.in_shape)}, but member 0 "
                    f"has {first.num_classes} and {tuple(first.in_shape)}; the members do not belong together."
                )
        self.members = nn.ModuleList(members)
        self.thresholds = list(thresholds) if thresholds is not None else [None] * len(members)
        if len(self.thresholds) != len(members):
            raise CheckpointError(f"the ensemble has {len(members)} members but {len(self.thresholds)} thresholds.")
        self.combine = combine
        self.member_names = list(names) if names is not None else [f"member-{i}" for i in range(len(members))]

    @classmethod
    def _loaded_as(cls, model, ref, fold):
        if not isinstance(model, Ensemble):
            what = (f"fold={fold!r} picks a single member" if fold is not None
                    else "holds a single model, not an ensemble")
            raise CheckpointError(f"{ref}: {what}; load it with milzoo.MILModel.from_pretrained({str(ref)!r}"
                                  f"{f', fold={fold!r}' if fold is not None else ''}).")
        cls._only_this_class(model, Ensemble)
        return model

    @property
    def class_names(self) -> list[str]:
        return self.members[0].class_names

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.members[0].in_shape

    def forward(self, batch: MILBatch) -> MILOutput:
        outs = [m(batch) for m in self.members]
        member_probs = torch.stack([o.bag_probs.float() for o in outs])  # [M, B, k]
        mean = member_probs.mean(0)
        probs_np = member_probs.detach().cpu().double().numpy()
        preds = np.stack([fold_predictions(p, t) for p, t in zip(probs_np, self.thresholds)])  # [M, B]
        vote = majority_vote(preds, probs_np.mean(0))
        attention = None
        if all(o.attention is not None for o in outs) and len({tuple(o.attention.shape) for o in outs}) == 1:
            attention = torch.stack([o.attention.float() for o in outs]).mean(0)
        inst = None
        if all(o.inst_probs is not None for o in outs) and len({tuple(o.inst_probs.shape) for o in outs}) == 1:
            inst = torch.stack([o.inst_probs for o in outs]).mean(0)
        return MILOutput(
            bag_logits=mean.clamp_min(1e-12).log(),
            mask=batch.mask,
            attention=attention,
            features=None,
            probs=mean,
            inst_probs_override=inst,
            extras={
                "vote": torch.as_tensor(vote, dtype=torch.long, device=mean.device),
                "member_probs": member_probs,
                "member_preds": torch.as_tensor(preds, dtype=torch.long, device=mean.device),
            },
        )

    def check_batch(self, batch: MILBatch) -> None:
        """What :meth:`predict` checks: the members share their input shape, so the first one checks."""
        self.members[0].check_batch(batch)
