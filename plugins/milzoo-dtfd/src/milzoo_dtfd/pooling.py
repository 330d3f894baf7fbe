"""DTFD-MIL pooling (docs/methods.md section 3).

1. Reduction ``X = ReLU(H W_r)`` (no bias), optionally followed by residual blocks
   (no bias either).
2. Pseudo-bags: the real instances are split into ``M = min(num_groups, n)``
   nearly equal pseudo-bags.  Training: a fresh random split per bag and forward
   (torch's global RNG, ``array_split`` sizes).  Evaluation (``eval_split``): the
   official seeded random split (:func:`seeded_split`), its bag probabilities averaged
   over ``eval_draws`` draws (``num_MeanInference``), or the rank-stratified split
   (:func:`stratified_split`); both are deterministic, as milzoo requires of an eval.
3. Tier 1 per pseudo-bag ``m``: gated attention ``a^m`` (softmax within the
   pseudo-bag), ``f_m = sum_i a^m_i x_i``, logits ``W_1 f_m + b_1``.  Instance
   scores ``s_i = W_1 (a^m_i x_i)`` (weight only, no bias), ``p_i = softmax_k(s_i)``.
4. Distillation per pseudo-bag: ``AFS`` keeps ``f_m``; ``MaxMinS`` keeps the
   ``distill_k`` highest- and lowest-ranked instance features ``x_i``; ``MaxS``
   only the highest.  Instances are ranked by ``p_{i,k-1}`` (``rank_class=last``)
   or by the probability of the class predicted by the pseudo-bag's tier-1 logits.
5. Tier 2 on the *detached* distilled set: gated attention, pooled vector, Linear.
   Its logits are the bag logits.
6. The PSMIL paper's DTFD baseline (the official ``dta`` pooling of
   ``LMBDA-design/PSAMIL``) is reachable by options: ``split = "chunks"``
   (``num_groups`` contiguous chunks in bag order, ``torch.chunk`` sizes, in training
   and evaluation), ``reduce = false`` (tier 1 works on the encoder features), the
   bias-free Kaiming ``tier1_classifier`` that also scores single instances
   (``instance_tier = "tier1"``), and ``detach_distilled = false`` (the bag loss
   reaches tier 1 and the encoder through tier 2).
7. Single instances (``instance_tier``): ``tier2`` scores a one-instance bag through
   both tiers (``W_2 x + b_2``, what the forward gives); ``tier1`` with the official
   instance score ``W_1 x`` (tier-1 weight, no bias), which then also scores
   one-instance bags at evaluation (the single-instance metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.errors import ComponentError
from milzoo.layers.heads import bag_classifier
from milzoo.layers.masking import attention_pool, bag_lengths, is_padded, masked_softmax
from milzoo.components.output import MILOutput
from milzoo.layers.precision import at_least_float32


def random_split(mask: Tensor, num_groups: int, lengths: Sequence[int] | None = None) -> Tensor:
    """Random pseudo-bag ids ``[B, N]`` (-1 at padding), ``array_split`` sizes over a random order.

    Each bag with ``n`` real instances gets ``min(num_groups, n)`` non-empty pseudo-bags;
    the permutation comes from torch's global (CPU) RNG.  ``lengths``: the bags' lengths when the host knows
    them (``milzoo.layers.bag_lengths``); a bag without padding is then split without reading ``mask``.
    """
    groups = torch.full(mask.shape, -1, dtype=torch.long)
    N = mask.shape[1]
    for b, n in enumerate(bag_lengths(mask, lengths)):
        if n == 0:
            continue
        m = min(num_groups, n)
        sizes = [n // m + (1 if j < n % m else 0) for j in range(m)]
        ids = torch.repeat_interleave(torch.arange(m), torch.tensor(sizes), output_size=n)
        perm = torch.randperm(n)
        if n == N or lengths is not None:  # known lengths are prefixes (MILBatch.known_lengths): rows 0..n-1
            real = perm
        else:
            real = torch.nonzero(mask[b].cpu(), as_tuple=False).squeeze(1)[perm]
        groups[b, real] = ids
    return groups.to(mask.device)


def device_random_split(mask: Tensor, num_groups: int) -> Tensor:
    """:func:`random_split` drawn on ``mask``'s device, without any host work: pseudo-bag ids ``[B, N]``.

    Each bag's real instances are ranked by uniform keys from torch's generator of that device (padding sorts
    last), and rank ``r`` goes to the pseudo-bag that ``array_split`` sizes give it: with ``q, s = divmod(n, M)``
    the first ``s`` pseudo-bags hold ``q + 1`` ranks, the others ``q``.  The same distribution as
    :func:`random_split` (a uniformly random partition into those sizes), other numbers; no shape depends on the
    data, so a captured step (``train.compile = "reduce-overhead"``) can replay it.
    """
    n = mask.sum(1, keepdim=True)  # [B, 1]
    m = n.clamp(max=num_groups).clamp_min(1)
    q, s = torch.div(n, m, rounding_mode="floor"), n % m
    keys = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)
    big = s * (q + 1)  # ranks held by the s pseudo-bags of q + 1
    group = torch.where(rank < big, torch.div(rank, q + 1, rounding_mode="floor"),
                        s + torch.div(rank - big, q.clamp_min(1), rounding_mode="floor"))
    return torch.where(mask, group, torch.full_like(group, -1))


def seeded_split(scores: Tensor, mask: Tensor, num_groups: int, seed: int) -> Tensor:
    """The official test-time random split, made deterministic: pseudo-bag ids ``[B, N]``.

    The real instances are ranked by ``scores`` (descending) and the ranks are dealt
    into ``min(num_groups, n)`` ``array_split``-sized pseudo-bags along ``randperm(n)``
    drawn from a generator seeded with ``(seed, n)``.  Each bag's partition is thus
    uniformly random (as in training and in the official test), yet the same for a
    given seed whatever the instance order, padding or batch.  Bags of equal size share
    the draw's rank-to-pseudo-bag pattern; average several draws (``eval_draws``) to
    smooth that.
    """
    groups = torch.full(mask.shape, -1, dtype=torch.long)
    filled = scores.detach().float().masked_fill(~mask, float("-inf")).cpu()
    order = torch.sort(filled, dim=1, descending=True, stable=True).indices
    patterns: dict[int, Tensor] = {}
    for b, n in enumerate(mask.sum(1).tolist()):
        n = int(n)
        if n == 0:
            continue
        if n not in patterns:
            m = min(num_groups, n)
            sizes = torch.tensor([n // m + (1 if j < n % m else 0) for j in range(m)])
            ids = torch.repeat_interleave(torch.arange(m), sizes)
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + n)
            patterns[n] = ids[torch.randperm(n, generator=gen)]  # pseudo-bag of each attention rank
        groups[b, order[b, :n]] = patterns[n]
    return groups.to(mask.device)


def chunk_split(mask: Tensor, num_groups: int) -> Tensor:
    """Contiguous pseudo-bag ids ``[B, N]`` (-1 at padding): ``torch.chunk`` of the real instances in bag order.

    A bag of ``n`` real instances gets chunks of ``ceil(n / num_groups)`` instances (the last one shorter),
    hence at most ``num_groups`` and sometimes fewer pseudo-bags, as ``torch.chunk`` gives.  No randomness.
    """
    n = mask.sum(1, keepdim=True)
    size = torch.div(n + num_groups - 1, num_groups, rounding_mode="floor").clamp_min(1)
    order = torch.cumsum(mask.long(), dim=1) - 1  # the rank of each real instance in bag order
    return torch.where(mask, torch.div(order, size, rounding_mode="floor"), torch.full_like(order, -1))


def stratified_split(scores: Tensor, mask: Tensor, num_groups: int) -> Tensor:
    """Deterministic pseudo-bag ids ``[B, N]``: rank the real instances by ``scores``
    (descending) and deal them round-robin into ``min(num_groups, n)`` pseudo-bags.

    Each pseudo-bag gets a similar spread of attention, like a random split on
    average, while the result does not depend on instance order or padding.
    """
    n = mask.sum(1, keepdim=True)
    m = n.clamp(max=num_groups).clamp_min(1)
    filled = scores.detach().masked_fill(~mask, float("-inf"))
    order = torch.sort(filled, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return torch.where(mask, rank % m, torch.full_like(rank, -1))


class GatedAttention(nn.Module):
    """``w^T (tanh(V x) * sigmoid(U x)) + b``: one unnormalised score per row."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.V = nn.Linear(dim, hidden)
        self.U = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.w(torch.tanh(self.V(x)) * torch.sigmoid(self.U(x))).squeeze(-1)


class ResidualBlock(nn.Module):
    """``x + ReLU(W_b ReLU(W_a x))`` with bias-free linears."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class DTFDPooling(Pooling):
    """DTFD-MIL: pseudo-bags, tier-1 attention, feature distillation, tier-2 attention (Zhang et al. 2022)."""

    name = "dtfd"
    takes_lengths = True
    #: classification only: tier 1 distils per-class instance probabilities (Grad-CAM of the class logits) into pseudo-bags (docs/tasks.md)
    tasks = ("classification",)
    default_loss = "dtfd"

    class Config(ComponentConfig):
        reduced_dim: int = Field(default=512, gt=0, description="width of the bias-free reduction (ReLU after)")
        num_res_blocks: int = Field(default=0, ge=0, description="bias-free residual blocks after the reduction")
        attn_hidden: int = Field(default=128, gt=0, description="D, the gated-attention hidden size (both tiers)")
        num_groups: int = Field(default=4, gt=0, description="M, pseudo-bags per bag (numGroup)")
        distill: Literal["AFS", "MaxMinS", "MaxS"] = Field(
            default="AFS", description="what each pseudo-bag passes to tier 2"
        )
        distill_k: int = Field(
            default=1, gt=0,
            description="t, instances kept per pseudo-bag and side by MaxMinS/MaxS (total_instance/numGroup)",
        )
        rank_class: Literal["last", "pred"] = Field(
            default="last",
            description="rank instances by the last class (faithful, binary) or by the pseudo-bag's "
            "predicted class",
        )
        split: Literal["random", "chunks"] = Field(
            default="random",
            description="training split: a fresh random split per bag (DTFD-MIL), or 'chunks' = num_groups "
            "contiguous chunks in bag order at training and evaluation (the PSMIL code's 'dta' baseline)",
        )
        split_generator: Literal["cpu", "device"] = Field(
            default="cpu",
            description="where the random training split is drawn: torch's CPU generator (as the official code; "
            "the step cannot be a CUDA graph) or the step's device (the same distribution, other draws; the step "
            "can be captured with train.compile = \"reduce-overhead\")",
        )
        reduce: bool = Field(
            default=True,
            description="the bias-free reduction ReLU(h W_r) (+ residual blocks); false = tier 1 on the "
            "encoder features (the PSMIL code's 'dta'; reduced_dim and num_res_blocks unused)",
        )
        tier1_classifier: Literal["linear", "kaiming_nobias"] = Field(
            default="linear",
            description="W_1: nn.Linear, or the PSMIL code's bias-free d x k matrix (kaiming_uniform_, bound "
            "sqrt(6/k)) that its 'dta' baseline shares with the single-instance classifier",
        )
        detach_distilled: bool = Field(
            default=True,
            description="tier 2 sees the distilled features as constants (DTFD-MIL); false lets the bag loss "
            "train tier 1 and the encoder through tier 2 (the PSMIL code's 'dta')",
        )
        eval_split: Literal["random", "stratified"] = Field(
            default="random",
            description="evaluation split: the official seeded random split (averaged over eval_draws) or "
            "attention ranks dealt round-robin",
        )
        eval_draws: int = Field(
            default=1, gt=0, description="random eval splits whose bag probabilities are averaged (num_MeanInference)"
        )
        eval_seed: int = Field(default=0, ge=0, description="seed of the random eval splits (draw j uses eval_seed + j)")
        instance_tier: Literal["tier2", "tier1"] = Field(
            default="tier2",
            description="how single instances are scored: through both tiers (W_2 x + b_2) or by the official "
            "tier-1 instance score (W_1 x, no bias; also one-instance bags at evaluation)",
        )
        dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout before the tier-1 classifier")
        dropout_2: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout before the tier-2 classifier")

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        if not config.reduce and config.num_res_blocks:
            raise ComponentError(
                "pooling 'dtfd': reduce = false passes the encoder features straight to tier 1, so there are no "
                f"residual blocks to add (num_res_blocks = {config.num_res_blocks}); set num_res_blocks = 0, "
                "or reduce = true."
            )
        d = config.reduced_dim if config.reduce else in_dim
        self.reduce = nn.Linear(in_dim, d, bias=False) if config.reduce else None
        self.res_blocks = nn.Sequential(*[ResidualBlock(d) for _ in range(config.num_res_blocks)])
        self.attention1 = GatedAttention(d, config.attn_hidden)
        self.drop1 = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.classifier1 = bag_classifier(d, num_classes, config.tier1_classifier)
        self.attention2 = GatedAttention(d, config.attn_hidden)
        self.drop2 = nn.Dropout(config.dropout_2) if config.dropout_2 > 0 else nn.Identity()
        self.classifier2 = nn.Linear(d, num_classes)

    def embed(self, h: Tensor) -> Tensor:
        """The reduced features ``x = res(ReLU(h W_r))`` (``h`` itself when ``reduce = false``)."""
        if self.reduce is None:
            return h
        return self.res_blocks(torch.relu(self.reduce(h)))

    def instance_logits(self, h: Tensor) -> Tensor:
        """Single-instance logits (``instance_tier``): ``tier2``, the bag logits of a one-instance bag
        (every tier passes ``x`` through, so ``W_2 x + b_2``); ``tier1``, the official instance score
        ``W_1 x`` (a one-instance bag's attention is 1; no bias)."""
        x = self.embed(h)
        if self.config.instance_tier == "tier1":
            return x @ self.classifier1.weight.t()
        return self.classifier2(self.drop2(x))

    def split(self, scores: Tensor, mask: Tensor, draw: int = 0, lengths: Sequence[int] | None = None) -> Tensor:
        if self.config.split == "chunks":
            return chunk_split(mask, self.config.num_groups)
        if self.training:
            if self.config.split_generator == "device":
                return device_random_split(mask, self.config.num_groups)
            return random_split(mask, self.config.num_groups, lengths)
        if self.config.eval_split == "stratified":
            return stratified_split(scores, mask, self.config.num_groups)
        return seeded_split(scores, mask, self.config.num_groups, self.config.eval_seed + draw)

    def forward(self, h: Tensor, mask: Tensor, lengths: Sequence[int] | None = None) -> MILOutput:
        x = self.embed(h)  # [B, N, d]
        if is_padded(mask, lengths):  # without padding the product would only copy x (100 MB at 50k x 512)
            x = x * mask.unsqueeze(-1)
        e = self.attention1(x)  # [B, N] tier-1 attention logits, computed once per bag
        # W_1 (a_i x_i) = a_i (W_1 x_i): project first, so no [B, N, d] product is built or kept
        # for backward (it cost 2 x 100 MB at 50k instances).
        xw = x @ self.classifier1.weight.t()  # [B, N, k]
        out = self._tiers(x, e, xw, mask, self.split(e, mask, lengths=lengths))
        deterministic = self.config.eval_split == "stratified" or self.config.split == "chunks"
        draws = 1 if self.training or deterministic else self.config.eval_draws
        if draws > 1:  # the official num_MeanInference: average the bag probabilities of several splits
            probs = out.bag_probs
            for j in range(1, draws):
                probs = probs + self._tiers(x, e, xw, mask, self.split(e, mask, j)).bag_probs
            out.probs = probs / draws
            out.bag_logits = torch.log(out.probs.clamp_min(1e-12)).to(out.bag_logits.dtype)
        if not self.training and self.config.instance_tier == "tier1":
            one = mask.sum(1) == 1  # single instances are scored by tier 1, as the official code does
            if bool(one.any()):
                s1 = (xw * mask.unsqueeze(-1)).sum(1).to(out.bag_logits.dtype)  # W_1 x of the one instance
                out.bag_logits = torch.where(one.unsqueeze(-1), s1, out.bag_logits)
                if out.probs is not None:
                    out.probs = torch.where(one.unsqueeze(-1), torch.softmax(at_least_float32(s1), -1), out.probs)
        return out

    def _tiers(self, x: Tensor, e: Tensor, xw: Tensor, mask: Tensor, groups: Tensor) -> MILOutput:
        """Tier 1, distillation and tier 2 for one pseudo-bag split ``groups`` ``[B, N]``."""
        Bn, N, _ = x.shape
        M = self.config.num_groups
        gmask = groups.unsqueeze(1) == torch.arange(M, device=x.device).view(1, M, 1)  # [B, M, N]
        pmask = gmask.any(-1)  # [B, M] non-empty pseudo-bags
        a = masked_softmax(e.unsqueeze(1).expand(Bn, M, N), gmask, dim=2)  # [B, M, N]
        f = torch.bmm(a.to(x.dtype), x)  # [B, M, d]
        t1_logits = self.classifier1(self.drop1(f))  # [B, M, k]

        a_inst = a.sum(1)  # each instance sits in exactly one pseudo-bag
        s = a_inst.unsqueeze(-1) * xw  # [B, N, k], no bias
        p = torch.softmax(at_least_float32(s.detach()), dim=-1)

        feats, fmask, dindex = self._distill(x, f, p, gmask, pmask, t1_logits, groups)
        if self.config.detach_distilled:
            feats = feats.detach()  # tier 2 treats the distilled features as constants (3.3)
        e2 = self.attention2(feats)
        a2 = masked_softmax(e2, fmask)
        z = attention_pool(a2, feats)
        bag_logits = self.classifier2(self.drop2(z))

        attention = masked_softmax(e, mask)  # whole-bag softmax, for localisation (3.6)
        inst_logits = attention.unsqueeze(-1) * xw
        extras = {
            "tier1_logits": t1_logits,
            "pseudo_mask": pmask,
            "pseudo_bag": groups,
            "pseudo_attention": a_inst,
            "inst_logits_pseudo": s * mask.unsqueeze(-1),
            "attention_scores": e.masked_fill(~mask, 0.0),
            "tier2_attention": a2,
            "bag_feature": z,
        }
        if dindex is not None:
            extras["distilled_index"] = dindex
        return MILOutput(
            bag_logits=bag_logits,
            mask=mask,
            inst_logits=inst_logits * mask.unsqueeze(-1),
            attention=attention,
            extras=extras,
        )

    def _distill(self, x, f, p, gmask, pmask, t1_logits, groups):
        """The tier-2 input set ``[B, S, d]``, its mask ``[B, S]`` and, for MaxS/MaxMinS, the
        picked instance indices ``[B, M, t or 2t]`` (-1 where a pseudo-bag has fewer instances)."""
        if self.config.distill == "AFS":
            return f, pmask, None
        Bn, M, N = gmask.shape
        if self.config.rank_class == "last":
            r = p[..., -1]  # [B, N]
        else:
            pred = t1_logits.detach().argmax(-1)  # [B, M]
            cls = pred.gather(1, groups.clamp_min(0))  # [B, N] predicted class of each instance's pseudo-bag
            r = p.gather(-1, cls.unsqueeze(-1)).squeeze(-1)
        rr = r.unsqueeze(1).expand(Bn, M, N)
        t = min(self.config.distill_k, N)
        valid = torch.arange(t, device=x.device).view(1, 1, t) < gmask.sum(-1, keepdim=True)  # [B, M, t]
        top = rr.masked_fill(~gmask, float("-inf")).topk(t, dim=2).indices
        idx, ok = [top], [valid]
        if self.config.distill == "MaxMinS":
            low = rr.masked_fill(~gmask, float("inf")).topk(t, dim=2, largest=False).indices
            idx.append(low)
            ok.append(valid)
        idx, ok = torch.cat(idx, dim=2), torch.cat(ok, dim=2)  # [B, M, T]
        flat = idx.reshape(Bn, -1)
        feats = x.gather(1, flat.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return feats, ok.reshape(Bn, -1), idx.masked_fill(~ok, -1)
