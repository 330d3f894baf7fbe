"""The bag-level cross-entropy loss (classification) and the regression losses: mse, l1, huber."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from milzoo.components.base import ComponentConfig, Loss
from milzoo.components.output import LossResult
from milzoo.layers.precision import at_least_float32


class BagCrossEntropy(Loss):
    """Cross-entropy of the bag logits against the bag label (softmax over k classes).

    For k = 2 this equals the Bernoulli NLL of ABMIL's sigmoid head with the
    logit difference as its input.
    """

    name = "bag_ce"

    class Config(ComponentConfig):
        weight: float = Field(default=1.0, ge=0.0)
        label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)

    def forward(self, out, batch, state):
        loss = F.cross_entropy(
            at_least_float32(out.bag_logits), batch.y, label_smoothing=self.config.label_smoothing
        )
        w = self.config.weight
        total = loss if w == 1.0 else w * loss  # 1.0 * loss is loss: one operator (and its gradient) less
        return LossResult(total=total, parts={"bag_ce": total.detach()})


class _RegressionLoss(Loss):
    """A loss on the bag outputs against the standardised targets of a regression task."""

    #: the contract suite checks it under a regression task (milzoo.testing)
    contract_task = "regression"
    needs_classes = False

    def bind(self, model, dataset) -> None:
        from milzoo.errors import ComponentError

        if not hasattr(model.task, "standardized"):
            raise ComponentError(
                f"the {self.name!r} loss trains continuous targets: it needs [task] name = \"regression\", not "
                f"{model.task.name!r}. For class labels use bag_ce (the default loss of a classification recipe)."
            )
        # its fitted mean and scale standardise each batch's targets; held outside the module tree, so the
        # loss's state does not save the task's buffers a second time
        self.__dict__["task"] = model.task

    def residual(self, out, batch):
        z = at_least_float32(out.bag_logits)[:, : self.task.config.targets]
        return z - self.task.standardized(batch.y).to(z.dtype)

    def forward(self, out, batch, state):
        total = self.config.weight * self.reduce(self.residual(out, batch))
        return LossResult(total=total, parts={self.name: total.detach()})


class MSELoss(_RegressionLoss):
    """Mean squared error of the bag outputs against the standardised targets (regression)."""

    name = "mse"

    class Config(ComponentConfig):
        weight: float = Field(default=1.0, ge=0.0)

    def reduce(self, r):
        return r.pow(2).mean()


class L1Loss(_RegressionLoss):
    """Mean absolute error of the bag outputs against the standardised targets (regression)."""

    name = "l1"

    class Config(ComponentConfig):
        weight: float = Field(default=1.0, ge=0.0)

    def reduce(self, r):
        return r.abs().mean()


class HuberLoss(_RegressionLoss):
    """Huber loss (quadratic below ``delta`` standard deviations, linear above) against standardised targets."""

    name = "huber"

    class Config(ComponentConfig):
        weight: float = Field(default=1.0, ge=0.0)
        delta: float = Field(default=1.0, gt=0.0, description="where the loss turns linear, in standard deviations")

    def reduce(self, r):
        return F.huber_loss(r, torch.zeros_like(r), delta=self.config.delta)
