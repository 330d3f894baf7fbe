"""The DEMIL loss: soft-label cross-entropy with candidate-set disambiguation (docs/methods.md 5.2).

``L = -sum_c s_c log p_c + lambda_A * sum_i (-a_i log a_i)``, averaged over the
bags of a batch, where ``s`` is the bag's soft label over its candidate set
``S`` and ``a_i`` the raw sigmoid attention.

Disambiguation: ``s`` starts uniform over ``S``.  Each training forward records
``p~ = p * 1_S / sum_{c in S} p_c`` (detached); at the end of epoch ``t``
(1-indexed) every bag seen in it gets ``s <- lam_t s + (1 - lam_t) p~`` with
``lam_t = (T - t + 1) / T``, so the new ``s`` is used from the next epoch on,
exactly as DEMIPL stores it in its dataset.  With one visit per bag per epoch
this equals DEMIPL's per-bag update; a bag visited several times in an epoch
uses the mean of its ``p~``.  Without candidate sets ``S = {y}``, ``s`` stays
one-hot and the loss is the ordinary bag cross-entropy (+ the entropy term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from milzoo.components.base import ComponentConfig, Loss
from milzoo.datasets.base import BagListDataset, MILSubset, dataset_size_for_state
from milzoo.errors import ComponentError
from milzoo.components.output import LossResult
from milzoo.layers.precision import at_least_float32

_STATE = ("soft_labels", "initialised", "pending_sum", "pending_count")


def _root(dataset):
    while isinstance(dataset, MILSubset):
        dataset = dataset.parent
    return dataset


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class DEMILLoss(Loss):
    """DEMIL soft-label (candidate-set) cross-entropy plus the attention entropy regulariser."""

    name = "demil"

    class Config(ComponentConfig):
        entropy_weight: float = Field(
            default=5e-4,
            ge=0.0,
            description="lambda_A (DEMIPL w_entropy_A) on sum_i -a_i log a_i of the sigmoid attention; "
            "code default 5e-4, the README commands use 1e-3",
        )
        disambiguate: bool = Field(
            default=True,
            description="update the soft labels with the (T-t+1)/T momentum schedule; "
            "False keeps them uniform over the candidate set",
        )

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        k = self.num_classes
        # Per-bag state, sized in bind(); all of it is saved with checkpoints.
        self.register_buffer("soft_labels", torch.zeros(0, k))
        self.register_buffer("initialised", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("pending_sum", torch.zeros(0, k))
        self.register_buffer("pending_count", torch.zeros(0))
        #: every candidate set of the dataset was checked in bind(): the steps need not check (read back) theirs
        self._sets_checked = False

    # ------------------------------------------------------------------ setup
    def bind(self, model, dataset) -> None:
        k = self.num_classes
        if model.num_classes != k:
            raise ComponentError(
                f"loss 'demil' was built for {k} classes but the model has {model.num_classes}; "
                "build both from the same dataset (the recipe's data section sets the class count)."
            )
        if dataset.num_classes != k:
            raise ComponentError(
                f"loss 'demil' was built for {k} classes but the dataset has {dataset.num_classes}; "
                "build the loss from the dataset it trains on."
            )
        if self.config.entropy_weight > 0 and not getattr(model.pooling, "provides_sigmoid_attention", False):
            raise ComponentError(
                f"loss 'demil' has entropy_weight = {self.config.entropy_weight} but pooling "
                f"{model.pooling.name!r} does not export the raw sigmoid attention "
                "(extras['sigmoid_attention']) that the entropy term needs. Use pooling 'demil', or "
                "set entropy_weight = 0 to keep only the candidate-set disambiguation."
            )
        n = dataset_size_for_state(dataset)
        dev = self.soft_labels.device
        self.soft_labels = torch.zeros(n, k, device=dev)
        self.initialised = torch.zeros(n, dtype=torch.bool, device=dev)
        self.pending_sum = torch.zeros(n, k, device=dev)
        self.pending_count = torch.zeros(n, device=dev)
        cand = self._cheap_candidates(_root(dataset), n)
        self._sets_checked = cand is not None
        if cand is not None:
            self._check_candidates(cand)
            self.soft_labels.copy_(cand / cand.sum(-1, keepdim=True))
            self.initialised.fill_(True)
        # Otherwise each row is initialised (uniform over S) the first time its bag is trained on.

    def _cheap_candidates(self, root, n: int) -> Tensor | None:
        """Every bag's candidate set, when it can be read without loading bags."""
        k = self.num_classes
        sets = getattr(root, "candidate_sets", None)
        if sets is not None:
            cand = torch.as_tensor(sets, dtype=torch.float32)
        elif isinstance(root, BagListDataset):
            rows = []
            for b in root.bags:
                if b.candidates is not None:
                    rows.append(b.candidates.float().reshape(-1))
                else:
                    rows.append(F.one_hot(torch.tensor(int(b.y)), k).float())
            if any(r.numel() != k for r in rows):
                raise ComponentError(
                    f"some bags carry candidate sets that are not {k} long; candidate sets must be "
                    f"0/1 vectors over the dataset's {k} classes."
                )
            cand = torch.stack(rows)
        else:
            return None
        if cand.shape != (n, k):
            return None
        return cand.to(self.soft_labels.device)

    @staticmethod
    def _check_candidates(cand: Tensor) -> None:
        if bool((cand.sum(-1) <= 0).any()):
            raise ComponentError(
                "a bag has an empty candidate label set; every bag's candidate set must contain at "
                "least its true label (check the dataset's candidate column or generator)."
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint may be loaded before bind() sized the state: adopt its shapes.
        for name in _STATE:
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                cur = getattr(self, name)
                setattr(self, name, torch.zeros(state_dict[key].shape, dtype=cur.dtype, device=cur.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --------------------------------------------------------------- training
    def _candidates(self, batch, like: Tensor) -> Tensor:
        k = self.num_classes
        if batch.candidates is None:
            return F.one_hot(batch.y.to(like.device).long(), k).to(like.dtype)
        cand = batch.candidates.to(device=like.device, dtype=like.dtype)
        if cand.shape != (batch.size, k):
            raise ComponentError(
                f"batch.candidates has shape {tuple(cand.shape)} but loss 'demil' expects "
                f"[{batch.size}, {k}] (one 0/1 vector over the {k} classes per bag)."
            )
        if not self._sets_checked:
            self._check_candidates(cand)  # a read back per step; bind() checks cheap datasets once instead
        return (cand > 0).to(like.dtype)

    def _targets(self, index: Tensor, cand: Tensor, training: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Soft labels of the batch's bags, plus which rows have state (``valid``) and their state rows
        (``slots``; rows without state point at row 0 and are masked out), or None, None without state.

        Fixed shapes throughout, nothing read back (a GPU step stays asynchronous and can be captured): the
        bags first seen in this batch start uniform through a scatter over the whole table (``amax``: a bag
        twice in a batch writes the same row once), not through boolean indexing.
        """
        uniform = cand / cand.sum(-1, keepdim=True)
        n = self.soft_labels.shape[0]
        if not self.config.disambiguate or n == 0:
            return uniform, None, None
        idx = index.to(self.soft_labels.device).long()
        valid = (idx >= 0) & (idx < n)
        slots = idx.clamp(0, n - 1)
        uni = uniform.to(device=self.soft_labels.device, dtype=self.soft_labels.dtype)
        if training:
            fresh = valid & ~self.initialised[slots]
            rows = slots.unsqueeze(-1).expand_as(uni)
            hit = torch.zeros_like(self.soft_labels).scatter_reduce(
                0, rows, fresh.unsqueeze(-1).expand_as(uni).to(uni.dtype), "amax")
            start = torch.zeros_like(self.soft_labels).scatter_reduce(
                0, rows, torch.where(fresh.unsqueeze(-1), uni, torch.zeros_like(uni)), "amax")
            self.soft_labels.copy_(torch.where(hit > 0, start, self.soft_labels))
            self.initialised.logical_or_(hit[:, 0] > 0)
        stored = torch.where(self.initialised[slots].unsqueeze(-1), self.soft_labels[slots], uni)
        stored = stored.to(device=uniform.device, dtype=uniform.dtype)
        targets = torch.where(valid.unsqueeze(-1).to(uniform.device), stored, uniform)
        return targets, valid, slots

    def forward(self, out, batch, state):
        logits = at_least_float32(out.bag_logits)
        k = self.num_classes
        if logits.dim() != 2 or logits.shape[-1] != k:
            raise ComponentError(
                f"loss 'demil' needs [B, {k}] bag logits over all classes, got {tuple(logits.shape)}; "
                "use it with a pooling whose bag outputs cover every class (softmax mode)."
            )
        cand = self._candidates(batch, logits)
        targets, valid, slots = self._targets(batch.index, cand, state.training)
        targets = targets.detach()
        if out.probs is not None:
            log_p = torch.log(at_least_float32(out.probs).clamp_min(1e-12))
        else:
            log_p = F.log_softmax(logits, dim=-1)
        ce = -(targets * log_p).sum(-1).mean()
        total = ce
        parts = {"demil_ce": ce.detach()}

        w = self.config.entropy_weight
        if w > 0:
            a = out.extras.get("sigmoid_attention")
            if a is None:
                raise ComponentError(
                    "loss 'demil' with entropy_weight > 0 needs out.extras['sigmoid_attention'] (the raw "
                    "sigmoid attention of pooling 'demil'); use that pooling or set entropy_weight = 0."
                )
            a = at_least_float32(a)
            ent_i = -(a * torch.log(a.clamp_min(1e-12)))
            ent = ent_i.masked_fill(~out.mask, 0.0).sum(dim=1).mean()
            total = total + w * ent
            parts["demil_entropy"] = (w * ent).detach()

        if state.training and slots is not None:
            self._record(at_least_float32(out.bag_probs.detach()), cand, valid, slots)
        return LossResult(total=total, parts=parts)

    @torch.no_grad()
    def _record(self, p: Tensor, cand: Tensor, valid: Tensor, slots: Tensor) -> None:
        """Accumulate ``p~ = p * 1_S / sum_S p`` for the epoch-end update."""
        masked = p * cand
        total = masked.sum(-1, keepdim=True)
        uniform = cand / cand.sum(-1, keepdim=True)
        p_tilde = torch.where(total > 0, masked / total.clamp_min(1e-30), uniform)
        # rows without state add zeros (to row 0): fixed shapes, no boolean selection
        keep = valid.to(device=self.pending_sum.device, dtype=self.pending_sum.dtype)
        self.pending_sum.index_add_(0, slots, p_tilde.to(self.pending_sum) * keep.unsqueeze(-1))
        self.pending_count.index_add_(0, slots, keep.to(self.pending_count.dtype))

    @staticmethod
    def momentum(epoch: int, num_epochs: int) -> float:
        """``lam_t = (T - t + 1) / T`` for the 0-based ``epoch`` (t = epoch + 1), clipped to [0, 1]."""
        T = max(1, int(num_epochs))
        t = int(epoch) + 1
        return min(1.0, max(0.0, (T - t + 1) / T))

    @torch.no_grad()
    def end_epoch(self, state) -> None:
        if self.pending_count.numel() == 0:
            return
        if _dist_ready():
            self._sync_ranks()
        seen = self.pending_count > 0
        if bool(seen.any()):
            lam = self.momentum(state.epoch, state.num_epochs)
            mean = self.pending_sum[seen] / self.pending_count[seen].unsqueeze(-1)
            self.soft_labels[seen] = lam * self.soft_labels[seen] + (1.0 - lam) * mean
        self.pending_sum.zero_()
        self.pending_count.zero_()

    def _sync_ranks(self) -> None:
        """Under torch.distributed every rank saw other bags: pool the records and the lazy
        initialisations (identical wherever made) so all ranks hold the same soft labels."""
        dist = torch.distributed
        dist.all_reduce(self.pending_sum)
        dist.all_reduce(self.pending_count)
        init = self.initialised.to(self.soft_labels.dtype)
        weighted = self.soft_labels * init.unsqueeze(-1)
        dist.all_reduce(init)
        dist.all_reduce(weighted)
        have = init > 0
        self.soft_labels[have] = weighted[have] / init[have].unsqueeze(-1)
        self.initialised.copy_(have)
