"""Survival losses: the discrete-time negative log-likelihood (``surv_nll``) and the Cox partial likelihood
(``cox``).  Both train the bag outputs of a model whose task is :class:`~milzoo_survival.task.SurvivalTask`.

Label convention: ``batch.y[:, 0]`` is the time, ``batch.y[:, 1]`` the event, **1 = event observed, 0 =
censored**.  The official code of MCAT/PORPOISE takes the censorship ``c = 1 - event`` instead; the formulas
below are written with the event indicator ``e``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from milzoo.components import ComponentConfig, Loss, LossResult
from milzoo.errors import ComponentError
from milzoo.layers import at_least_float32

__all__ = ["CoxLoss", "DiscreteSurvivalNLL", "cox_nll", "discrete_survival_nll"]


def discrete_survival_nll(logits: Tensor, bin_index: Tensor, event: Tensor, alpha: float = 0.0) -> Tensor:
    """Per-bag discrete-time survival NLL (Zadeh & Schmid 2021), ``[B]``.

    ``logits [B, k]`` are the hazard logits, ``h_j = sigmoid(z_j)``; ``S_j = prod_{i<=j} (1 - h_i)`` with
    ``S_{-1} = 1``; ``y`` the bag's time bin.  An observed event (``e = 1``) in bin ``y`` has likelihood
    ``S_{y-1} h_y`` (alive at the bin's start, event in it), a censored bag (``e = 0``) ``S_y`` (alive at the
    end of its bin: MCAT's convention, censoring counted as surviving the bin it falls in).  With
    ``u = -e (log S_{y-1} + log h_y)`` and ``c = -(1 - e) log S_y`` the loss is
    ``(1 - alpha) (u + c) + alpha u`` (``alpha`` up-weights the uncensored term, MCAT/PORPOISE's
    ``alpha_surv``).  Computed in log space (``log h = logsigmoid(z)``, ``log(1 - h) = logsigmoid(-z)``), which
    equals the official code's value wherever its clamp of the probabilities at 1e-7 is inactive.
    """
    log_h = F.logsigmoid(logits)
    log_1mh = F.logsigmoid(-logits)
    log_s = torch.cumsum(log_1mh, dim=1)
    log_s_pad = torch.cat([log_s.new_zeros(log_s.shape[0], 1), log_s], dim=1)  # log S_{j-1} at column j
    y = bin_index.long().clamp(0, logits.shape[1] - 1).unsqueeze(1)
    e = event.to(logits.dtype)
    uncensored = -e * (log_s_pad.gather(1, y) + log_h.gather(1, y)).squeeze(1)
    censored = -(1 - e) * log_s_pad.gather(1, y + 1).squeeze(1)
    return (1 - alpha) * (uncensored + censored) + alpha * uncensored


def cox_nll(risk: Tensor, time: Tensor, event: Tensor) -> Tensor:
    """Negative Cox partial log-likelihood with Breslow ties, divided by the number of events (a scalar).

    ``-(1 / n_e) sum_{i: e_i = 1} (r_i - log sum_{j: t_j >= t_i} exp r_j)``: every event's risk set is every bag
    of the batch still followed at its time, tied times included (Breslow).  A batch without any event has no
    term: the loss is an exact zero that keeps the graph, never NaN.  The events are weighted by a 0/1 mask rather
    than selected, so that nothing is read back to the host (a GPU step stays asynchronous and can be captured).
    """
    e = (event > 0.5).to(risk.dtype)
    at_risk = time.unsqueeze(0) >= time.unsqueeze(1)  # [i, j]: j at risk at t_i (the diagonal is always True)
    log_den = torch.logsumexp(risk.unsqueeze(0).masked_fill(~at_risk, float("-inf")), dim=1)
    return -((risk - log_den) * e).sum() / e.sum().clamp_min(1.0)


class _SurvivalLoss(Loss):
    """Binds to a model whose task is the survival task with the head this loss trains."""

    head: str = ""
    #: trains (time, event) labels, not class indices (milzoo refuses it for a classification recipe)
    needs_classes = False
    #: the contract suite's model for this loss (milzoo.testing): a survival task with this head
    contract_task = "survival"

    def bind(self, model, dataset) -> None:
        task = getattr(model, "task", None)
        from milzoo_survival.task import SurvivalTask

        if not isinstance(task, SurvivalTask):
            got = getattr(task, "name", None) or "classification"
            raise ComponentError(
                f"the {self.name!r} loss trains survival labels (time, event): it needs [task] name = \"survival\" "
                f"(head = \"{self.head}\"), but the recipe's task is {got!r}. Set the task, or use the task's own loss "
                "(leave [[loss]] out to get it)."
            )
        if task.config.head != self.head:
            other = "cox" if self.head == "discrete" else "surv_nll"
            raise ComponentError(
                f"the {self.name!r} loss trains the survival task's {self.head!r} head, but the recipe sets task.head = "
                f"{task.config.head!r}. Use the {other!r} loss for that head (or leave [[loss]] out), or set "
                f"task.head = \"{self.head}\"."
            )
        self.__dict__["_task"] = task  # not a submodule: the task's buffers belong to the model

    @property
    def task(self):
        task = self.__dict__.get("_task")
        if task is None:
            raise ComponentError(f"the {self.name!r} loss is not bound to a model: call bind(model, dataset) first.")
        return task

    def _extra_logits(self, out) -> list[Tensor]:
        names = self.config.extra_logits
        missing = [n for n in names if n not in out.extras]
        if missing:
            raise ComponentError(
                f"{self.name}.extra_logits names {missing}, which the pooling does not output (its extras: "
                f"{sorted(out.extras) or 'none'}). Remove them, or name logits of the recipe's pooling."
            )
        return [out.extras[n] for n in names]


class DiscreteSurvivalNLL(_SurvivalLoss):
    """Discrete-time survival NLL over quantile time bins (Zadeh & Schmid 2021; Patch-GCN, MCAT, PORPOISE)."""

    name = "surv_nll"
    head = "discrete"
    contract_task_options = {"head": "discrete"}

    class Config(ComponentConfig):
        weight: float = Field(default=1.0, ge=0.0)
        alpha: float = Field(
            default=0.0, ge=0.0, le=1.0,
            description="extra weight of the uncensored term: (1 - alpha) NLL + alpha NLL_uncensored "
            "(MCAT/PORPOISE's alpha_surv: 0 by default there, 0.5 in SurvPath)",
        )
        extra_logits: list[str] = Field(
            default_factory=list,
            description="names of MILOutput.extras holding further [B, k] hazard logits trained with the same loss "
            "and averaged with the bag logits' (e.g. DSMIL's 'max_stream_logits')",
        )

    def forward(self, out, batch, state):
        task = self.task
        k = task.config.bins
        y = batch.y.reshape(batch.y.shape[0], -1)
        bins = task.bin_index(y[:, 0])
        streams = [out.bag_logits, *self._extra_logits(out)]
        losses = [discrete_survival_nll(at_least_float32(z)[:, :k], bins, y[:, 1], self.config.alpha).mean()
                  for z in streams]
        total = self.config.weight * torch.stack(losses).mean()
        return LossResult(total=total, parts={self.name: total.detach()})


class CoxLoss(_SurvivalLoss):
    """Negative Cox partial log-likelihood (Breslow ties) over the bags of each step; needs batch_size >= 8."""

    name = "cox"
    head = "cox"
    contract_task_options = {"head": "cox"}
    #: the trainer refuses a recipe whose train.batch_size is smaller: a risk set of one or two bags says nothing
    min_bags_per_step = 8

    class Config(ComponentConfig):
        weight: float = Field(default=1.0, ge=0.0)
        extra_logits: list[str] = Field(
            default_factory=list,
            description="names of MILOutput.extras holding further [B, 1] log relative hazards trained with the "
            "same loss and averaged with the bag logits' (e.g. DSMIL's 'max_stream_logits')",
        )

    def forward(self, out, batch, state):
        y = batch.y.reshape(batch.y.shape[0], -1)
        streams = [out.bag_logits, *self._extra_logits(out)]
        losses = []
        for z in streams:
            risk = at_least_float32(z)[:, 0]
            losses.append(cox_nll(risk, y[:, 0].to(risk.dtype), y[:, 1]))
        total = self.config.weight * torch.stack(losses).mean()
        return LossResult(total=total, parts={self.name: total.detach()})
