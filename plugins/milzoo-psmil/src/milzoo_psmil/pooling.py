"""PSAtt: probability-space attention pooling (methods.md 7.2, 7.3; seed paper 3.3).

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

from milzoo_psmil._dist import gather_rows


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

    def prototype_probs(self, h: Tensor) -> Tensor:
        """``P~ = softmax_k(H Q / tau_p)``, detached: ``[..., d] -> [..., k]`` (float32).

        Before the first prototype update ``Q`` is zero, so P~ is uniform; that is
        exactly what the code's initialisation (all columns equal) gives too.
        """
        with torch.no_grad():
            sim = at_least_float32(h.detach()) @ at_least_float32(self.Q)
            return torch.softmax(sim / self.config.tau_p, dim=-1)

    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:
        p_tilde = self.prototype_probs(h)  # [B, N, k]
        scores = self.attn(p_tilde.to(h.dtype)).squeeze(-1)  # [B, N]
        attention = masked_softmax(scores, mask)
        if self.config.onehot_mix:
            onehot = F.one_hot(p_tilde.argmax(-1), self.num_classes).to(h.dtype)
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
                "attention_scores": scores.masked_fill(~mask, 0.0),
                "bag_feature": z,
            },
        )

    # --- prototype update -------------------------------------------------------
    @torch.no_grad()
    def after_forward(self, out: MILOutput, batch) -> None:
        """Momentum update of ``Q`` from one training forward (methods.md 7.3).

        Every bag's statistics (instance assignments ``argmax_k P~``, new columns)
        are computed against the ``Q`` that the forward used; the per-bag blends
        ``Q <- normalize((1 - gamma) Q + gamma Q_new)`` are then applied one bag
        after another in batch order.  A batch of one bag is therefore exactly the
        official per-step update.  Under ``torch.distributed`` every rank gathers
        all ranks' per-bag statistics (``all_gather``, concatenated in rank order)
        and applies the same sequence, so the prototypes stay identical.
        """
        if not self.training:
            return
        if out.features is None or out.attention is None:
            raise ValueError("PSAtt.after_forward needs out.features and out.attention (set by MILModel)")
        h = at_least_float32(out.features.detach())  # [B, N, d]
        mask = batch.mask.to(h.device)
        m = mask.unsqueeze(-1).to(h.dtype)
        k, d = self.num_classes, self.in_dim
        Q = self.Q
        # assignments against the current Q; with Q = 0 (not yet initialised) all go to class 0
        assign = (h @ Q.to(h.dtype)).argmax(-1)  # [B, N]
        bag_mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # [B, d], for the first-bag init

        if self.config.proto_update == "label":
            y = batch.y.to(h.device).long()
            sel = ((assign == y.unsqueeze(1)) & mask).unsqueeze(-1).to(h.dtype)  # [B, N, 1]
            count = sel.sum(1)  # [B, 1]
            inst_mean = (h * sel).sum(1) / count.clamp_min(1.0)
            bag_feat = attention_pool(out.attention.detach().to(h.dtype), h)  # H_bag = a^T H
            new_col = torch.where(count > 0, inst_mean, bag_feat)  # fallback to the bag feature
            stats = torch.cat([new_col, y.unsqueeze(1).to(h.dtype), bag_mean], dim=1)
            stats = gather_rows(stats)
            new_cols, labels, means = stats[:, :d], stats[:, d].long(), stats[:, d + 1 :]
            self._maybe_init(means)
            g = self.config.gamma
            for b in range(new_cols.shape[0]):
                c = int(labels[b])
                if c < 0:  # unknown label: nothing to align with
                    continue
                Q[:, c] = F.normalize((1 - g) * Q[:, c] + g * new_cols[b].to(Q.dtype), dim=0)
        else:
            onehot = F.one_hot(assign, k).to(h.dtype) * m  # [B, N, k]
            counts = onehot.sum(1)  # [B, k]
            sums = torch.einsum("bnk,bnd->bkd", onehot, h)
            class_means = sums / counts.clamp_min(1.0).unsqueeze(-1)  # [B, k, d]
            stats = torch.cat([class_means.flatten(1), counts, bag_mean], dim=1)
            stats = gather_rows(stats)
            cm = stats[:, : k * d].view(-1, k, d)
            cnt = stats[:, k * d : k * d + k]
            self._maybe_init(stats[:, k * d + k :])
            g = self.config.gamma
            for b in range(cm.shape[0]):
                has = cnt[b] > 0  # classes with no assigned instance are skipped
                if not bool(has.any()):
                    continue
                blended = F.normalize((1 - g) * Q + g * cm[b].t().to(Q.dtype), dim=0)
                Q[:, has] = blended[:, has]

    def _maybe_init(self, bag_means: Tensor) -> None:
        """First-bag initialisation: every column = mean feature of the first bag (unnormalised)."""
        if bool(self.initialized.item()) or bag_means.shape[0] == 0:
            return
        self.Q.copy_(bag_means[0].to(self.Q.dtype).unsqueeze(1).expand(-1, self.num_classes))
        self.initialized.fill_(1)
