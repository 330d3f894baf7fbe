"""``MILModel``: optional standardisation -> optional augmentation -> encoder -> pooling.

The encoder only sees the real (unpadded) instances of a batch, all in one
call; when an :class:`~milzoo.components.Augment` is set and the model is
training, every view of every instance goes through the encoder in that same
call.  The pooling sees view 0 (the weak view); the other views' features are
returned in ``out.extras["view_features"]`` (``[V, M, d]``, rows in
``batch.mask`` order) for losses such as PSAli.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from milzoo.batch import MILBatch
from milzoo.components import Augment, Encoder, Pooling, component_options
from milzoo.output import MILOutput


class Standardize(nn.Module):
    """Fixed per-feature standardisation (fitted on a fold's training bags only)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, instances: Tensor | Iterable[Tensor]) -> None:
        """Fit on a ``[M, D]`` tensor or, streaming, on an iterable of per-bag tensors."""
        chunks = [instances] if isinstance(instances, Tensor) else instances
        n, s1, s2 = 0, None, None
        for x in chunks:
            x = x.double().flatten(1)
            s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
            s2 = (x * x).sum(0) if s2 is None else s2 + (x * x).sum(0)
            n += x.shape[0]
        mean = s1 / n
        std = (s2 / n - mean * mean).clamp_min(0).sqrt()
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)).to(self.std.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class MILModel(nn.Module):
    def __init__(
        self,
        encoder: Encoder,
        pooling: Pooling,
        augment: Augment | None = None,
        standardize: bool = False,
        class_names: list[str] | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.augment = augment
        self.standardizer = Standardize(int(torch.Size(encoder.in_shape).numel())) if standardize else None
        self.class_names = list(class_names or [str(i) for i in range(pooling.num_classes)])
        self.channels_last = channels_last

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.encoder.in_shape

    @property
    def num_classes(self) -> int:
        return self.pooling.num_classes

    def encode_instances(self, inst: Tensor) -> Tensor:
        """Encode a flat ``[M, *in_shape]`` tensor of instances (no augmentation)."""
        if self.standardizer is not None:
            inst = self.standardizer(inst.flatten(1)).view_as(inst)
        if self.channels_last and inst.dim() == 4:
            inst = inst.contiguous(memory_format=torch.channels_last)
        return self.encoder(inst)

    def encode(self, batch: MILBatch) -> tuple[Tensor, Tensor | None]:
        mask = batch.mask
        b, n = mask.shape
        # Without padding (one bag, or bags of equal length) the flat instances and
        # the per-bag features are views: no gather, no zero-filled scatter.
        full = batch.unpadded if batch.unpadded is not None else bool(mask.all())
        inst = batch.x.flatten(0, 1) if full else batch.x[mask]  # [M, *s]
        if inst.is_floating_point() is False:
            inst = inst.float()
        view_feats = None
        if self.augment is not None and self.training:
            if self.standardizer is not None:
                inst = self.standardizer(inst.flatten(1)).view_as(inst)
            views = self.augment(inst)  # [V, M, *s]
            v, m = views.shape[:2]
            flat = views.flatten(0, 1)
            if self.channels_last and flat.dim() == 4:
                flat = flat.contiguous(memory_format=torch.channels_last)
            view_feats = self.encoder(flat).view(v, m, -1)
            h_flat = view_feats[0]
        else:
            h_flat = self.encode_instances(inst)
        if full:
            return h_flat.reshape(b, n, h_flat.shape[-1]), view_feats
        h = h_flat.new_zeros(b, n, h_flat.shape[-1])
        h[mask] = h_flat
        return h, view_feats

    def forward(self, batch: MILBatch) -> MILOutput:
        h, view_feats = self.encode(batch)
        out = self.pooling(h, batch.mask)
        out.features = h
        if view_feats is not None:
            out.extras["view_features"] = view_feats
        return out

    @torch.no_grad()
    def predict(self, batch: MILBatch) -> MILOutput:
        """Forward in eval mode without gradients (restores the previous mode)."""
        was = self.training
        self.eval()
        try:
            return self(batch)
        finally:
            self.train(was)

    def spec(self) -> dict[str, Any]:
        """The JSON-able description ``build_model_from_spec`` rebuilds this model from."""
        def comp(c):
            if c is None:
                return None
            return {"name": c.name, **component_options(c)}

        return {
            "encoder": comp(self.encoder),
            "pooling": comp(self.pooling),
            "augment": comp(self.augment),
            "in_shape": list(self.in_shape),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "standardize": self.standardizer is not None,
            "channels_last": self.channels_last,
        }
