"""PSAtt: probability-space attention pooling (docs/methods.md 7.2, 7.3; seed paper 3.3).

Forward (per bag, masked over the real instances)::

    P~  = softmax_k(H Q / tau_p)            # [n, k], detached: no gradient to H or Q
    a   = softmax_n(P~ w + b_w)             # w: Linear(k -> 1)
    a   = (a + softmax_n(onehot(argmax P~) w + b_w)) / 2      # only with onehot_mix
    z   = a^T H                              # bag feature
    bag logits = C z + b,  instance logits = C h_i + b

``Q`` (``d x k``, one column per class including class 0) is a buffer, not a
parameter: it is moved by a momentum rule in :meth:`PSAttPooling.after_forward`,
which the trainer calls after each training forward.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Pooling
from milzoo.layers.heads import bag_classifier
from milzoo.layers.masking import attention_pool, masked_softmax
from milzoo.components.output import MILOutput
from milzoo.layers.precision import at_least_float32

from milzoo_psmil._dist import distributed_active, gather_rows


class PSAttPooling(Pooling):
    """Probability-space attention: attention computed from prototype class probabilities."""

    name = "psatt"

    class Config(ComponentConfig):
        tau_p: float = Field(
            default=1.0, gt=0.0, description="temperature of P~ = softmax(H Q / tau_p); 1.0 = paper and code"
        )
        onehot_mix: bool = Field(
            default=False,
            description="average the attention with one computed from onehot(argmax P~) "
            "(synthetic-benchmark code); False = paper and WSI code",
        )
        proto_update: Literal["label", "all"] = Field(
            default="label",
            description="'label': update only the bag label's column, falling back to the bag feature "
            "(official synthetic code); 'all': every class column from its assigned instances (paper eq. 11)",
        )
        gamma: float = Field(default=0.001, gt=0.0, le=1.0, description="prototype momentum step")
        proto_init: Literal["auto", "first_bag", "random"] = Field(
            default="auto",
            description="'first_bag': all columns = mean feature of the first training bag (code); "
            "'random': random unit columns; 'auto': first_bag for label mode, random for all mode",
        )
        classifier: Literal["linear", "kaiming_nobias"] = Field(
            default="linear",
            description="bag classifier C: 'linear' = nn.Linear with bias b (the paper's C h + b, weights "
            "U(+-1/sqrt(d))); 'kaiming_nobias' = the official code's bias-free d x k parameter, "
            "kaiming_uniform_ with fan_in = k (bound sqrt(6/k): 0.77 for 10 classes)",
        )

    def __init__(self, config, in_dim, num_classes):
        super().__init__(config, in_dim, num_classes)
        self.attn = nn.Linear(num_classes, 1)  # w, b_w
        self.classifier = bag_classifier(in_dim, num_classes, config.classifier)  # C (, b)
        init = config.proto_init
        if init == "auto":
            init = "first_bag" if config.proto_update == "label" else "random"
        self.proto_init = init
        if init == "random":
            q = F.normalize(torch.randn(in_dim, num_classes), dim=0)
            done = True
        else:
            q = torch.zeros(in_dim, num_classes)
            done = False
        self.register_buffer("Q", q)
        # uint8 flag: 1 once Q holds a real initialisation (saved with the checkpoint)
        self.register_buffer("initialized", torch.tensor([1 if done else 0], dtype=torch.uint8))
        self._known_initialized = done

    def check_task(self, task) -> None:
        """Classification in either prototype update; another task only with ``proto_update = "all"`` (the
        paper's eq. 11, which moves each prototype towards the instances assigned to it and reads no label) and
        at least two outputs (the survival task's time bins: one prototype per bin).  The official ``"label"``
        update moves the column of each bag's class, which only class labels have."""
        from milzoo.errors import ComponentError

        if getattr(task, "classes", False):
            return
        if self.config.proto_update != "all":
            raise ComponentError(
                f"PSAtt's prototype update '{self.config.proto_update}' moves the column of each bag's class, but "
                f"the {task.name!r} task has no classes; set pooling.proto_update = \"all\" (the paper's eq. 11: "
                "each prototype follows the instances assigned to it), or use another pooling."
            )
        if self.num_classes < 2:
            raise ComponentError(
                f"PSAtt attends through a softmax over its {self.num_classes} output(s): with one output (the "
                f"{task.name!r} task's head) every instance gets the same weight. Use a task head with several "
                "outputs (survival's discrete time bins) or another pooling (abmil, transmil)."
            )

    # --- pieces ---------------------------------------------------------------
    def instance_logits(self, h: Tensor) -> Tensor:
        return self.classifier(h)

    def prototype_scores(self, h: Tensor) -> Tensor:
        """``H Q``, detached, in at least float32 and outside any autocast: ``[..., d] -> [..., k]``.

        The forward's P~ and the prototype update's assignments are both computed from these scores (the
        forward keeps them in ``extras["prototype_scores"]``), so they agree exactly under bf16 autocast too.
        """
        with torch.no_grad(), _full_precision(h.device.type):
            return at_least_float32(h.detach()) @ at_least_float32(self.Q)

    def prototype_probs(self, h: Tensor, scores: Tensor | None = None) -> Tensor:
        """``P~ = softmax_k(H Q / tau_p)``, detached: ``[..., d] -> [..., k]`` (float32; from ``scores``,
        :meth:`prototype_scores`, when given).

        Before the first prototype update ``Q`` is zero, so P~ is uniform; that is
        exactly what the code's initialisation (all columns equal) gives too.
        """
        sim = self.prototype_scores(h) if scores is None else scores
        with torch.no_grad():
            tau = self.config.tau_p
            return torch.softmax(sim if tau == 1.0 else sim / tau, dim=-1)

    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:
        sim = self.prototype_scores(h)  # [B, N, k]
        p_tilde = self.prototype_probs(h, sim)
        scores = self.attn(p_tilde.to(h.dtype)).squeeze(-1)  # [B, N]
        attention = masked_softmax(scores, mask)
        if self.config.onehot_mix:
            onehot = (p_tilde.argmax(-1, keepdim=True) == torch.arange(self.num_classes, device=h.device)).to(h.dtype)
            attention = 0.5 * (attention + masked_softmax(self.attn(onehot).squeeze(-1), mask))
        z = attention_pool(attention, h)
        m = mask.unsqueeze(-1)
        return MILOutput(
            bag_logits=self.classifier(z),
            mask=mask,
            inst_logits=self.classifier(h) * m,
            attention=attention,
            extras={
                "P_tilde": p_tilde * m,
                "attention_scores": torch.where(mask, scores, 0.0),
                "bag_feature": z,
                "prototype_scores": sim,  # H Q against the prototypes this forward used (padding not zeroed)
            },
        )

    # --- prototype update -------------------------------------------------------
    @torch.no_grad()
    def after_forward(self, out: MILOutput, batch) -> None:
        """Momentum update of ``Q`` from one training forward (docs/methods.md 7.3).

        Every bag's statistics (instance assignments ``argmax_k P~``, new columns)
        are computed against the ``Q`` that the forward used; the per-bag blends
        ``Q <- normalize((1 - gamma) Q + gamma Q_new)`` are then applied one bag
        after another in batch order.  A batch of one bag is therefore exactly the
        official per-step update.  Under ``torch.distributed`` every rank gathers
        all ranks' per-bag statistics (``all_gather``, concatenated in rank order)
        and applies the same sequence, so the prototypes stay identical.

        Nothing is read back to the host (no synchronisation on a GPU): the statistics of all bags are
        computed at once, and each bag's blend is applied to the whole ``d x k`` matrix and kept, through
        a mask, for the columns it moves (none for an unknown label).
        """
        if not self.training:
            return
        if out.features is None or out.attention is None:
            raise ValueError("PSAtt.after_forward needs out.features and out.attention (set by MILModel)")
        h = at_least_float32(out.features.detach())  # [B, N, d]
        mask = batch.mask.to(h.device)
        k, d = self.num_classes, self.in_dim
        # assignments against the Q the forward used (its scores, when the forward kept them)
        sim = out.extras.get("prototype_scores")
        if sim is None or sim.shape[:-1] != h.shape[:-1]:
            sim = h @ self.Q.to(h.dtype)
        assign = sim.argmax(-1)  # [B, N]; with Q = 0 (not yet initialised) all go to class 0
        need_init = not self._known_initialized
        bag_mean = None
        if need_init:  # the first-bag initialisation's statistics, until Q is known to hold a real one
            m = mask.unsqueeze(-1).to(h.dtype)
            bag_mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # [B, d]
        if self.config.proto_update == "label":
            y = batch.y.to(h.device).long()
            sel = ((assign == y.unsqueeze(1)) & mask).to(h.dtype)  # [B, N]
            count = sel.sum(1, keepdim=True)  # [B, 1]
            inst_mean = torch.bmm(sel.unsqueeze(1), h).squeeze(1) / count.clamp_min(1.0)
            bag_feat = out.extras.get("bag_feature")
            if bag_feat is None or bag_feat.dtype != h.dtype:
                bag_feat = attention_pool(out.attention.detach().to(h.dtype), h)  # H_bag = a^T H
            new_col = torch.where(count > 0, inst_mean, bag_feat.detach())  # fallback to the bag feature
            if distributed_active():
                stats = gather_rows(torch.cat([new_col, y.unsqueeze(1).to(h.dtype), *_opt(bag_mean)], dim=1))
                new_col, y = stats[:, :d], stats[:, d].long()
                bag_mean = stats[:, d + 1 :] if need_init else None
            # move[b, c]: bag b moves column c (its label; none for an unknown label, y < 0)
            move = y.unsqueeze(1) == torch.arange(k, device=h.device)
            new = new_col.unsqueeze(2)  # [B, d, 1]: each bag's column, broadcast over the k columns
        else:
            onehot = (assign.unsqueeze(-1) == torch.arange(k, device=h.device)) & mask.unsqueeze(-1)
            onehot = onehot.to(h.dtype)  # [B, N, k]
            counts = onehot.sum(1)  # [B, k]
            sums = torch.einsum("bnk,bnd->bdk", onehot, h)
            class_means = sums / counts.clamp_min(1.0).unsqueeze(1)  # [B, d, k]
            if distributed_active():
                stats = gather_rows(torch.cat([class_means.flatten(1), counts, *_opt(bag_mean)], dim=1))
                class_means = stats[:, : k * d].view(-1, d, k)
                counts = stats[:, k * d : k * d + k]
                bag_mean = stats[:, k * d + k :] if need_init else None
            move = counts > 0  # classes with no assigned instance are skipped
            new = class_means
        if need_init:
            self._init_from(bag_mean)
        self.Q.copy_(_blend_in_order(self.Q, new.to(self.Q.dtype), move, self.config.gamma))

    # the flag is a buffer (checkpoints keep it); whether it is known to be set is host state, so that a step
    # reads nothing back: after one initialisation in this process, or a random one, no more work per step
    _known_initialized: bool = False

    def _init_from(self, bag_means: Tensor) -> None:
        """First-bag initialisation, without reading the flag back: while it is 0, every column = the mean
        feature of the first bag (unnormalised); then the flag is 1."""
        if bag_means.shape[0] == 0:
            return
        first = bag_means[0].to(self.Q.dtype).unsqueeze(1).expand(-1, self.num_classes)
        self.Q.copy_(torch.where(self.initialized.bool(), self.Q, first))
        self.initialized.fill_(1)
        self._known_initialized = True

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # the loaded flag is read (once, without a host read) at the next update


def _blend_in_order(Q: Tensor, new: Tensor, move: Tensor, gamma: float) -> Tensor:
    """``Q`` after the bags' blends, one bag after another: for bag ``b``, every column ``c`` with
    ``move[b, c]`` becomes ``normalize((1 - gamma) Q[:, c] + gamma new[b, :, c])``.

    ``new`` is ``[B, d, k]`` (or ``[B, d, 1]``, one column for all), ``move`` ``[B, k]`` bool.  Each bag costs
    six kernels whatever it moves, and nothing is read back.  The arithmetic is ``F.normalize``'s and the
    per-column code's, element for element.
    """
    moved = gamma * new
    keep = 1 - gamma
    for b in range(new.shape[0]):
        blended = keep * Q + moved[b]
        blended = blended / blended.norm(dim=0, keepdim=True).clamp_min(1e-12)  # F.normalize(blended, dim=0)
        Q = torch.where(move[b], blended, Q)
    return Q


def _opt(t: Tensor | None) -> list[Tensor]:
    return [] if t is None else [t]


def _full_precision(device_type: str):
    """A context without autocast on ``device_type`` (nothing to do when it is off)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
