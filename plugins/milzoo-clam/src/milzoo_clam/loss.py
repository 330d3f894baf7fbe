"""The CLAM loss: ``bag_weight * L_bag + (1 - bag_weight) * L_inst`` (docs/models/clam.md).

``L_bag`` is the bag cross-entropy (or the smooth top-1 SVM, the official ``--bag_loss svm``).  ``L_inst``
is the instance-level clustering loss of each bag, averaged over the bags of a batch (the official code
trains one bag per step): for the bag's own class ``c`` (in-class branch) the ``k_sample`` most attended
instances are pseudo-labelled 1 and the ``k_sample`` least attended 0 for instance classifier ``c``; with
``subtyping``, every other class's classifier also gets its ``k_sample`` most attended instances as 0
(out-of-class branch), and the sum over classes is divided by ``k``.  SB ranks every class by its single
attention branch, MB class ``c`` by branch ``c``.  A bag with fewer than ``k_sample`` real instances uses
all of them (the official code stops with an error there); see the docs page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from milzoo.components.base import ComponentConfig, Loss
from milzoo.components.output import LossResult
from milzoo.errors import ComponentError
from milzoo.layers.masking import bag_lengths, is_padded, real_rows
from milzoo.layers.precision import at_least_float32


def smooth_top1_svm(x: Tensor, y: Tensor, tau: float = 1.0, alpha: float = 1.0, thresh: float = 1e3) -> Tensor:
    """The smooth top-1 multi-class SVM (Berrada et al. 2018) as CLAM uses it (``SmoothTop1SVM(n_classes)``).

    Per sample: ``tau * logsumexp((x + alpha [j != y] - x_y) / tau)``; where the top score beats the second by
    at least ``tau * log(thresh)`` the hard (non-smooth) ``max_j (x_j + alpha [j != y]) - x_y`` is used
    instead, as the reference implementation does for numerical safety.  Returns the mean over samples.
    """
    return _svm_per_sample(x, y, tau, alpha, thresh).sum() / x.shape[0]


def _svm_per_sample(x: Tensor, y: Tensor, tau: float = 1.0, alpha: float = 1.0, thresh: float = 1e3) -> Tensor:
    """:func:`smooth_top1_svm` of each sample: ``x [n, c]``, ``y [n]`` -> ``[n]``."""
    n, c = x.shape
    if c < 2:
        raise ComponentError("the smooth top-1 SVM needs at least 2 classes; use the cross-entropy instead.")
    top2 = x.detach().topk(2, dim=1).values
    hard = (top2[:, 0] - top2[:, 1]) >= tau * math.log(thresh)
    margin = alpha * (torch.arange(c, device=x.device)[None, :] != y[:, None]).to(x.dtype)
    aug = x + margin - x.gather(1, y[:, None])
    smooth_loss = tau * torch.logsumexp(aug / tau, dim=1)
    hard_loss = aug.max(dim=1).values
    return torch.where(hard, hard_loss, smooth_loss)


def _criterion(kind: str, logits: Tensor, target: Tensor) -> Tensor:
    if kind == "svm":
        return smooth_top1_svm(logits, target)
    return F.cross_entropy(logits, target)


def _per_sample(kind: str, logits: Tensor, target: int) -> Tensor:
    """The criterion of each sample of ``logits [..., c]`` against one class ``target``: ``[...]``."""
    flat = logits.reshape(-1, logits.shape[-1])
    y = torch.full((flat.shape[0],), target, dtype=torch.long, device=logits.device)
    per = _svm_per_sample(flat, y) if kind == "svm" else F.cross_entropy(flat, y, reduction="none")
    return per.view(logits.shape[:-1])


class CLAMLoss(Loss):
    """CLAM's bag loss plus its instance-clustering loss, weighted bag_weight / 1 - bag_weight."""

    name = "clam"
    contract_pooling = "clam_sb"

    class Config(ComponentConfig):
        bag_weight: float = Field(default=0.7, ge=0.0, le=1.0, description="weight of the bag loss (official 0.7)")
        inst_loss: Literal["svm", "ce"] = Field(
            default="svm", description="instance-clustering loss: the smooth top-1 SVM (every command of the "
            "official README) or cross-entropy"
        )
        bag_loss: Literal["ce", "svm"] = Field(default="ce", description="bag loss (official --bag_loss, ce)")

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        self.k_sample: int | None = None
        self.subtyping = False

    def bind(self, model, dataset):
        from milzoo_clam.pooling import _CLAMPooling

        pooling = getattr(model, "pooling", model)
        if not isinstance(pooling, _CLAMPooling):
            raise ComponentError(
                f"loss 'clam' needs a CLAM pooling (it reads the attention and instance classifiers of "
                f"'clam_sb' or 'clam_mb'), but the model uses {getattr(pooling, 'name', type(pooling).__name__)!r}; "
                "set [pooling] name = \"clam_sb\" (or \"clam_mb\"), or use another loss such as 'bag_ce'."
            )
        if pooling.num_classes != self.num_classes:
            raise ComponentError(
                f"loss 'clam' was built for {self.num_classes} classes but the pooling has {pooling.num_classes}; "
                "build both from the same dataset."
            )
        self.k_sample = int(pooling.config.k_sample)
        self.subtyping = bool(pooling.config.subtyping)

    def instance_loss(self, out, y: Tensor, lengths: Sequence[int] | None = None) -> Tensor:
        """The clustering loss of each bag, averaged over the batch (a 0-d tensor with a graph).

        ``lengths``: each bag's real instances when the host knows them (``MILBatch.host_lengths``; else they
        are read from the mask).  Bags of one length are scored all at once; a padded batch bag by bag, each
        on its real rows.  Labels are never read back to the host.
        """
        try:
            scores = out.extras["attention_scores"]
            cluster = out.extras["cluster_logits"]
        except KeyError:
            raise ComponentError(
                "loss 'clam' needs the outputs of a CLAM pooling (extras 'attention_scores' and "
                "'cluster_logits'); use [pooling] name = \"clam_sb\" or \"clam_mb\"."
            ) from None
        if self.k_sample is None:
            raise ComponentError(
                "loss 'clam' was used before bind(model, dataset) told it the pooling's k_sample and subtyping; "
                "call bind first (the trainer does)."
            )
        cluster = at_least_float32(cluster)
        lengths = bag_lengths(out.mask, lengths)
        if not is_padded(out.mask, lengths):
            return self._fixed_length_loss(scores, cluster, y)
        per_bag = []
        for b, n in enumerate(lengths):  # padded: each bag's real rows, by index (nothing read back)
            rows = real_rows(out.mask[b], n)
            per_bag.append(self._fixed_length_loss(
                scores[b].index_select(0, rows)[None], cluster[b].index_select(0, rows)[None], y[b : b + 1]))
        return torch.stack(per_bag).mean()

    def _fixed_length_loss(self, scores: Tensor, cluster: Tensor, y: Tensor) -> Tensor:
        """:meth:`instance_loss` of bags without padding, all bags and classes at once: the same sets (the
        ``k`` most and least attended instances of each bag for each class) and the same per-bag means, summed
        in another order."""
        B, n, k_cls, _ = cluster.shape
        k = min(self.k_sample, n)
        s = scores.unsqueeze(-1).expand(B, n, k_cls) if scores.dim() == 2 else scores  # [B, n, k_cls]

        def picked(order: Tensor) -> Tensor:  # [B, k, k_cls] instance indices -> their logits [B, k, k_cls, 2]
            return cluster.gather(1, order.unsqueeze(-1).expand(-1, -1, -1, cluster.shape[-1]))

        kind = self.config.inst_loss
        top = picked(s.topk(k, dim=1).indices)
        bottom = picked((-s).topk(k, dim=1).indices)
        in_class = (_per_sample(kind, top, 1).sum(1) + _per_sample(kind, bottom, 0).sum(1)) / (2 * k)  # [B, k_cls]
        own = torch.arange(k_cls, device=y.device)[None, :] == y[:, None]
        if self.subtyping:
            per = torch.where(own, in_class, _per_sample(kind, top, 0).sum(1) / k).sum(1) / k_cls
        else:
            per = torch.where(own, in_class, torch.zeros_like(in_class)).sum(1)
        return per.mean()

    def forward(self, out, batch, state):
        y = batch.y
        bag = _criterion(self.config.bag_loss, at_least_float32(out.bag_logits), y)
        inst = self.instance_loss(out, y, batch.host_lengths())
        w = self.config.bag_weight
        bag_part, inst_part = w * bag, (1.0 - w) * inst
        return LossResult(
            total=bag_part + inst_part, parts={"clam_bag": bag_part.detach(), "clam_inst": inst_part.detach()}
        )
