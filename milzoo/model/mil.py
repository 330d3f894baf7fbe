"""``MILModel``: optional standardisation -> optional augmentation -> encoder -> pooling.

The encoder only sees the real (unpadded) instances of a batch, all in one
call; when an :class:`~milzoo.components.base.Augment` is set and the model is
training, every view of every instance goes through the encoder in that same
call.  The pooling sees view 0 (the weak view); the other views' features are
returned in ``out.extras["view_features"]`` (``[V, M, d]``, rows in
``batch.mask`` order) for losses such as PSAli.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from milzoo.datasets.batch import MILBatch
from milzoo.components.base import Augment, Encoder, Pooling, Task, component_options, pool_bags
from milzoo.errors import CheckpointError, DataError
from milzoo.layers.masking import real_rows
from milzoo.components.output import MILOutput
from milzoo.model.sharing import SavesPretrained, members_text

log = logging.getLogger(__name__)


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


class Predicts:
    """``predict``, shared by :class:`MILModel` and :class:`~milzoo.model.ensemble.Ensemble`: the batch is
    checked (``check_batch``), then the module runs forward in eval mode without gradients."""

    #: the binary threshold chosen on validation that the checkpoint recorded (None: argmax); set by
    #: ``milzoo.model.decision.apply_recorded_threshold``
    decision_threshold: float | None = None

    def check_batch(self, batch: MILBatch) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, batch: MILBatch) -> MILOutput:
        """Forward in eval mode without gradients (restores the previous mode).

        The batch is checked first (:meth:`check_batch`): empty bags, instances of another shape and NaN/inf
        features are a :class:`~milzoo.errors.DataError` naming the problem, never a torch error or NaN
        probabilities.  ``out.extras["prediction"]`` holds the task's predictions (class probabilities, a
        regression target in its units, a survival risk; columns in ``out.extras["prediction_columns"]``).  For
        class labels, ``out.extras["pred"]`` holds each bag's class and
        ``out.extras["decision_rule"]`` the rule that chose it (:mod:`milzoo.model.decision`: the recorded
        validation threshold, else argmax; an ensemble's vote).
        """
        self.check_batch(batch)
        was = self.training
        self.eval()
        try:
            out = self(batch)
        finally:
            self.train(was)
        from milzoo.model.decision import attach_decisions

        attach_decisions(self, out)
        task = getattr(self, "task", None)
        if task is not None:  # the task's predictions in the label's units (a regression target, a survival risk)
            out.extras["prediction"] = task.predict(out)
            out.extras["prediction_columns"] = task.columns(self.class_names)
        return out


class MILModel(Predicts, SavesPretrained, nn.Module):
    """A MIL model: optional standardisation -> optional augmentation -> encoder -> pooling.

    ``model.save_pretrained(dir)``, ``MILModel.from_pretrained(ref)`` and ``model.push_to_hub("org/name")``
    share it as a Hub folder (:mod:`milzoo.model.sharing`; docs/hub.md).
    """

    def __init__(
        self,
        encoder: Encoder,
        pooling: Pooling,
        augment: Augment | None = None,
        standardize: bool = False,
        class_names: list[str] | None = None,
        channels_last: bool = False,
        task: Task | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.augment = augment
        if task is None:  # classification, what every model was before tasks (docs/tasks.md)
            from milzoo.registry import get_component

            cls = get_component("task", "classification")
            task = cls(cls.Config())
        #: what the labels are and what a prediction is; its fitted state (buffers) is saved with the weights
        self.task = task
        self.standardizer = Standardize(int(torch.Size(encoder.in_shape).numel())) if standardize else None
        self.class_names = list(class_names or [str(i) for i in range(pooling.num_classes)])
        self.channels_last = channels_last

    @classmethod
    def _loaded_as(cls, model, ref, fold):
        if not isinstance(model, MILModel):
            raise CheckpointError(
                f"{ref} holds an ensemble of {members_text(model)}, and MILModel.from_pretrained gives one model. "
                f"Load the ensemble with milzoo.Ensemble.from_pretrained({str(ref)!r}), or one member with "
                f"MILModel.from_pretrained({str(ref)!r}, fold=N)."
            )
        cls._only_this_class(model, MILModel)
        return model

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.encoder.in_shape

    @property
    def num_classes(self) -> int:
        return self.pooling.num_classes

    def _shape_text(self, shape: tuple[int, ...]) -> str:
        if len(shape) == 1:
            return f"{shape[0]} feature{'s' if shape[0] != 1 else ''}"
        return f"shape {list(shape)}"

    def check_instances(self, x: Tensor, what: str = "the instances") -> None:
        """Refuse ``[M, *s]`` instances whose shape is not this model's ``in_shape`` (a clear error, not a
        matrix-size error deep in the encoder), and NaN/inf values (they would give NaN probabilities)."""
        if not isinstance(x, Tensor):
            raise DataError(f"{what} must be a torch.Tensor of shape [M, {', '.join(map(str, self.in_shape))}], "
                            f"not {type(x).__name__}.")
        want = tuple(self.in_shape)
        if tuple(x.shape[1:]) != want:
            got = tuple(x.shape[1:])
            hint = ""
            if x.dim() == len(want) and tuple(x.shape) == want:
                hint = " A single instance needs the bag dimension: x[None] (or x.unsqueeze(0))."
            elif x.dim() == len(want):
                hint = f" A bag is [n, {', '.join(map(str, want))}]: n instances of this model's shape."
            raise DataError(
                f"{what} have {self._shape_text(got) if got else 'no instance dimension'} (tensor shape "
                f"{list(x.shape)}), but this model was trained on instances with {self._shape_text(want)}.{hint} "
                "Use data with "
                "the features the model was trained on (the same files, extractor and columns)."
            )
        if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
            raise DataError(f"{what} hold NaN or infinite values; the model cannot score them. Clean the data "
                            "(or drop those instances) first.")

    def check_batch(self, batch: MILBatch) -> None:
        """What :meth:`predict` checks before it runs: a :class:`MILBatch` of non-empty bags whose instances
        have this model's shape and finite values."""
        if not isinstance(batch, MILBatch):
            raise DataError(
                f"predict() takes a MILBatch, not {type(batch).__name__}; build one with "
                "milzoo.collate_bags([milzoo.Bag(x=features, y=0), ...]) (x is [n, *in_shape] per bag)."
            )
        x, mask = batch.x, batch.mask
        if x.dim() < 2 or tuple(mask.shape) != tuple(x.shape[:2]) or mask.dtype != torch.bool:
            raise DataError(f"the batch is malformed: x {list(x.shape)} needs [B, N, *in_shape] and mask "
                            f"{list(mask.shape)} ({mask.dtype}) a bool [B, N]; build it with milzoo.collate_bags.")
        empty = (~mask.any(1)).nonzero().flatten().tolist()
        if empty:
            named = len(batch.bag_ids) == x.shape[0]
            ids = [(batch.bag_ids[i] if named else "") or f"#{i}" for i in empty[:5]]
            raise DataError(f"{len(empty)} bag(s) of the batch hold no instances (e.g. {ids}); a bag needs at "
                            "least one instance to be classified.")
        self.check_instances(x.flatten(0, 1) if batch.unpadded or bool(mask.all()) else x[mask],
                             "the bags' instances")

    @property
    def float_dtype(self) -> torch.dtype:
        """The weights' float type (float64 after ``.double()``, as ``train.precision = "fp64"`` trains)."""
        param = next(self.parameters(), None)
        return torch.float32 if param is None else param.dtype

    def _as_float(self, inst: Tensor) -> Tensor:
        """Instances in the weights' float type: images (uint8) and float32 features for a float64 model."""
        dtype = self.float_dtype
        if not inst.is_floating_point():
            return inst.to(dtype if dtype == torch.float64 else torch.float32)
        return inst.to(dtype) if dtype == torch.float64 and inst.dtype != dtype else inst

    def encode_instances(self, inst: Tensor) -> Tensor:
        """Encode a flat ``[M, *in_shape]`` tensor of instances (no augmentation)."""
        inst = self._as_float(inst)
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
        lengths = None if full else batch.host_lengths()
        # padded bags whose lengths the host knows: the real rows by index (nothing read back on a GPU, where
        # x[mask] and h[mask] = ... wait for the device to count the rows); else by the mask
        rows = None if lengths is None else real_rows(mask, sum(lengths))
        if full:
            inst = batch.x.flatten(0, 1)  # [M, *s]
        elif rows is not None:
            inst = batch.x.flatten(0, 1).index_select(0, rows)
        else:
            inst = batch.x[mask]
        inst = self._as_float(inst)
        view_feats = None
        if self.augment is not None and self.training:
            if self.standardizer is not None:
                inst = self.standardizer(inst.flatten(1)).view_as(inst)
            views = self.augment(inst)  # [V, M, *s]
            v, m = views.shape[:2]
            flat = views.flatten(0, 1)
            if self.channels_last and flat.dim() == 4:
                flat = flat.contiguous(memory_format=torch.channels_last)
            feats = self.encoder(flat)
            view_feats = feats.view(v, m, -1)
            # one view: the features themselves (indexing view 0 would cost a zero-filled gradient buffer)
            h_flat = feats if v == 1 else view_feats[0]
        else:
            h_flat = self.encode_instances(inst)
        if full:
            return h_flat.reshape(b, n, h_flat.shape[-1]), view_feats
        if rows is not None:
            d = h_flat.shape[-1]
            return h_flat.new_zeros(b * n, d).index_copy(0, rows, h_flat).view(b, n, d), view_feats
        h = h_flat.new_zeros(b, n, h_flat.shape[-1])
        h[mask] = h_flat
        return h, view_feats

    def forward(self, batch: MILBatch) -> MILOutput:
        h, view_feats = self.encode(batch)
        out = pool_bags(self.pooling, h, batch.mask, batch.host_lengths())
        out.features = h
        if view_feats is not None:
            out.extras["view_features"] = view_feats
        return out

    def spec(self) -> dict[str, Any]:
        """The JSON-able description of this model (its components with their options, input shape, classes)
        that a checkpoint's config.json records and ``milzoo.checkpoint.build_model_from_config`` rebuilds."""
        def comp(c):
            if c is None:
                return None
            return {"name": c.name, **component_options(c)}

        spec = {
            "encoder": comp(self.encoder),
            "pooling": comp(self.pooling),
            "augment": comp(self.augment),
            "in_shape": list(self.in_shape),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "standardize": self.standardizer is not None,
            "channels_last": self.channels_last,
        }
        task = comp(self.task)
        if task != {"name": "classification"}:  # the default: classification checkpoints read as they always did
            spec["task"] = task
        return spec
