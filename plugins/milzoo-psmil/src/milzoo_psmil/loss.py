"""PSAli: probability-space alignment loss (docs/methods.md 7.4; seed paper 3.2, eq. 5 and 9).

For every real instance ``i`` and each of its views ``x'`` (view 0 = the weak
one the pooling saw), ``p(x') = softmax_k(C h(x') + b)`` with the *bag*
classifier.  The target is ``c_i = argmax_k sum_{x'} log p_k(x')`` (the argmax of
the normalised product of the views' probabilities, Proposition 2), taken
without gradient, and the loss is the cross-entropy of every view's logits to
``c_i``, averaged over views and instances (per bag, then over the bags of the
batch).  It is weighted by ``lambda_T = lam * min(T, tau)`` for the 0-based
epoch ``T`` and added to the bag loss by the trainer.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from milzoo.components.base import ComponentConfig, Loss
from milzoo.errors import ComponentError
from milzoo.components.output import LossResult
from milzoo.layers.masking import real_rows
from milzoo.layers.precision import at_least_float32


class PSAliLoss(Loss):
    """Probability-space alignment: augmented views of an instance agree on one hard pseudo-label."""

    name = "psali"
    #: the contract suite (milzoo.testing) builds its test model with augmented views
    contract_needs_views = True

    class Config(ComponentConfig):
        lam: float = Field(default=0.01, ge=0.0, description="base weight lambda (ablation/logs: 0.01)")
        tau: int = Field(default=10, ge=0, description="epoch at which lambda_T stops growing")
        schedule: Literal["linear_capped", "constant"] = Field(
            default="linear_capped",
            description="'linear_capped': lambda_T = lam * min(T, tau) (paper eq. 9); "
            "'constant': lambda_T = lam (the ablation rows lambda_T = 0.01 / 0.1)",
        )
        allow_single_view: bool = Field(
            default=False,
            description="allow a model without augmentation: the target is then each instance's own argmax",
        )
        freeze_encoder_epochs: int = Field(
            default=1, ge=0, description="epochs (from 0) during which the trainer freezes the encoder"
        )
        ce_input: Literal["logits", "probabilities"] = Field(
            default="logits",
            description="'logits': -log softmax(C h + b)_c, the paper's formula; 'probabilities': the official "
            "main.py, whose CrossEntropyLoss is applied to softmax outputs (softmax twice: a gradient "
            "0.18-0.31x as large for 10 classes, docs/models/psmil.md)",
        )

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        #: read by the trainer: the encoder gets no updates while ``state.epoch < freeze_encoder_epochs``
        self.freeze_encoder_epochs = int(config.freeze_encoder_epochs)
        self._pooling = None  # set by bind(); never registered as a submodule

    def lambda_at(self, epoch: int) -> float:
        """``lambda_T`` for the 0-based epoch ``T``."""
        c = self.config
        if c.schedule == "constant":
            return float(c.lam)
        # no int() of an int: under torch.compile the epoch is a symbolic int, and int() would specialise the
        # compiled step to one epoch (a recompilation per epoch)
        return float(c.lam) * min(max(epoch if isinstance(epoch, int) else int(epoch), 0), c.tau)

    def bind(self, model, dataset) -> None:
        base = getattr(model, "module", model)  # unwrap DistributedDataParallel
        pooling = getattr(base, "pooling", None)
        pname = getattr(pooling, "name", type(pooling).__name__)
        if pooling is None or not getattr(pooling, "scores_instances", False):
            raise ComponentError(
                f"loss 'psali' needs a pooling whose bag classifier can score single instances "
                f"(instance_logits), but pooling {pname!r} cannot. Use PSAli with a pooling that "
                f"has a linear bag classifier (e.g. 'psatt', 'abmil', 'demil') or remove 'psali' "
                f"from the recipe's [[loss]] list."
            )
        if int(pooling.num_classes) != self.num_classes:
            raise ComponentError(
                f"loss 'psali' was built for {self.num_classes} classes but pooling {pname!r} has "
                f"{pooling.num_classes}; build both from the same dataset."
            )
        augment = getattr(base, "augment", None)
        views = 0 if augment is None else int(getattr(augment, "num_views", 1))
        if views < 2 and not self.config.allow_single_view:
            what = "no augmentation" if augment is None else f"an augmentation with {views} view"
            raise ComponentError(
                f"loss 'psali' aligns several augmented views of each instance, but the model has "
                f"{what}. Add an [augment] section with at least 2 views to the recipe, or set "
                f"allow_single_view = true under the psali [[loss]] entry to align each instance "
                f"with its own prediction."
            )
        # plain attribute, bypassing nn.Module registration: the pooling's parameters
        # must not appear a second time in the loss's state_dict or parameters()
        object.__setattr__(self, "_pooling", pooling)

    def forward(self, out, batch, state) -> LossResult:
        pooling = self._pooling
        if pooling is None:
            raise ComponentError("loss 'psali' was used before bind(model, dataset); the trainer calls bind first.")
        mask = batch.mask
        unpadded = getattr(batch, "unpadded", None)
        views = out.extras.get("view_features")
        if views is None:  # evaluation, or a model without augmentation: the pooling's view only
            if out.features is None:
                raise ComponentError("loss 'psali' needs out.features or out.extras['view_features'] (set by MILModel).")
            lengths = batch.host_lengths() if hasattr(batch, "host_lengths") else None
            if unpadded:
                rows = out.features.flatten(0, 1)
            elif lengths is not None:  # by index: boolean indexing would make a GPU count the rows first
                rows = out.features.flatten(0, 1).index_select(0, real_rows(mask, sum(lengths)))
            else:
                rows = out.features[mask]
            views = rows.unsqueeze(0)  # [1, M, d]
        # the trainer runs losses outside autocast: bring bf16/fp16 features to the classifier's dtype
        param = next(pooling.parameters(), None)
        if param is not None and views.is_floating_point() and views.dtype != param.dtype:
            views = views.to(param.dtype)
        raw = self.alignment(pooling.instance_logits(views), mask, ce_input=self.config.ce_input, unpadded=unpadded)
        lam_t = self.lambda_at(state.epoch)
        total = lam_t * raw
        return LossResult(
            total=total,
            parts={
                "psali": total.detach(),
                "psali_raw": raw.detach(),
                # filled on the device: torch.tensor(lam_t, device=...) would be a host-to-device copy (a sync)
                "lambda_T": raw.detach().new_full((), lam_t),
            },
        )

    @staticmethod
    def targets(logits: Tensor) -> Tensor:
        """``c_i = argmax_k sum_v log softmax(logits[v, i])_k``: ``[V, M, k] -> [M]`` (no gradient)."""
        with torch.no_grad():
            return F.log_softmax(at_least_float32(logits.detach()), dim=-1).sum(0).argmax(-1)

    @classmethod
    def alignment(cls, logits: Tensor, mask: Tensor, ce_input: str = "logits", unpadded: bool | None = None) -> Tensor:
        """Unweighted ``L_ins`` from view logits ``[V, M, k]`` (rows in ``mask`` order).

        Averaged over views and over each bag's instances, then over the bags.  With
        ``ce_input = "probabilities"`` the cross-entropy is taken of ``softmax(logits)`` used as
        logits, as the official code does; the target is the same in both forms.  ``unpadded``: every bag
        fills all of ``mask``'s rows (``MILBatch.unpadded``), so the mean over bags of per-bag means is the
        mean over all rows.  Nothing is read back to the host (no synchronisation on a GPU).
        """
        scores = at_least_float32(logits)
        if ce_input == "probabilities":
            scores = torch.softmax(scores, dim=-1)
        logp = F.log_softmax(scores, dim=-1)
        # the target: in 'logits' form the same log-probabilities, without gradient (targets() computes them so)
        target = logp.detach().sum(0).argmax(-1) if ce_input != "probabilities" else cls.targets(logits)
        nll = -logp.gather(-1, target.view(1, -1, 1).expand(logp.shape[0], -1, 1)).squeeze(-1)  # [V, M]
        if unpadded:
            return nll.mean()
        per_inst = nll.mean(0)  # [M]
        counts = mask.sum(1)  # [B]
        # the bag of each row (rows are in mask order): the first bag whose cumulative count exceeds the row
        rows = torch.arange(per_inst.shape[0], device=per_inst.device)
        bag_of_row = torch.searchsorted(counts.cumsum(0).to(per_inst.device), rows, right=True)
        sums = per_inst.new_zeros(mask.shape[0]).index_add(0, bag_of_row, per_inst)
        counts = counts.to(per_inst.device, per_inst.dtype)
        has = counts > 0
        per_bag = torch.where(has, sums / counts.clamp_min(1.0), 0.0)
        return per_bag.sum() / has.sum().clamp_min(1)
