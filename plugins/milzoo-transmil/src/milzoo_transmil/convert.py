"""Checkpoints of the official TransMIL code (``szc19990412/TransMIL``, ``models/TransMIL.py``) as milzoo's TransMIL.

The official code trains with PyTorch Lightning, whose checkpoints hold the weights under ``state_dict`` with
the ``model.`` prefix of its ``ModelInterface``; both are removed.  Then, key by key:

===========================================  =====================================
official                                     milzoo (``pooling.`` + ...)
===========================================  =====================================
``_fc1.0.*``                                 ``fc.0``
``cls_token``                                ``cls_token``
``layer{1,2}.norm.*``                        ``layer{1,2}.norm``
``layer{1,2}.attn.to_qkv.weight``            ``layer{1,2}.attn.to_qkv.weight``
``layer{1,2}.attn.to_out.0.*``               ``layer{1,2}.attn.to_out.0``
``layer{1,2}.attn.res_conv.weight``          ``layer{1,2}.attn.res_conv.weight``
``pos_layer.proj`` / ``proj1`` / ``proj2``   ``ppeg.convs.0`` / ``.1`` / ``.2`` (kernels 7, 5, 3)
``norm.*``                                   ``norm``
``_fc2.*``                                   ``classifier``
===========================================  =====================================

The feature and token sizes, the heads (``res_conv`` has one filter per head), the head size, the residual and
PPEG kernels and the number of classes come from the shapes; the landmarks are the official ``dim // 2``.

The official ``requirements.txt`` pins ``nystrom-attention==0.0.9``, whose layer keeps the *first* ``n`` output
rows after padding the sequence at the front (``out[:, :n]``; fixed to ``out[:, -n:]`` in 0.0.10).  A model
trained with it computes something else, so the option ``nystrom_attention`` says which release trained the
weights (default: the pinned one) and sets the pooling's ``nystrom_padding``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field, PositiveInt

from milzoo.components import ComponentConfig, ConversionPlan, Converter, tensor_shape
from milzoo.errors import ConversionError

log = logging.getLogger(__name__)

_LEAVES = ("weight", "bias")


def _shape(state: Mapping[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    return tensor_shape(state, key, ndim, "official TransMIL (models/TransMIL.py)")


class TransMILConverter(Converter):
    """State dicts of the official TransMIL code (models/TransMIL.py; its Lightning .ckpt state_dict)."""

    name = "transmil"
    source = "https://github.com/szc19990412/TransMIL (models/TransMIL.py)"
    wrappers = ("state_dict",)
    prefixes = ("module.", "model.")
    extract_hint = (
        "note that the official code's PyTorch Lightning checkpoints pickle its configuration (addict.Dict "
        "objects), which weights_only refuses. Where you trust the file, in the official environment, save its "
        "weights alone: python -c \"import torch; ckpt = torch.load('epoch=XX-val_loss=Y.ckpt', map_location='cpu', "
        "weights_only=False); torch.save(ckpt['state_dict'], 'transmil_state.pt')\", and convert transmil_state.pt")

    class Config(ComponentConfig):
        nystrom_attention: Literal["0.0.9", "0.0.10+"] = Field(
            default="0.0.9",
            description="the nystrom-attention release the weights were trained with: 0.0.9, which the official "
            "requirements.txt pins (its layer keeps the first n output rows, padding included), or 0.0.10+ (pip "
            "install without the pin: the padding's rows are dropped)")
        num_landmarks: PositiveInt | None = Field(default=None, description="Nystrom landmarks (None: the official "
                                                  "dim // 2, 256 at dim 512)")
        pinv_iterations: PositiveInt = Field(default=6, description="pseudo-inverse iterations (official: 6)")
        attn_dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="dropout after the attention output "
                                    "projection (official: 0.1; acts only when trained further)")

    def plan(self, state: Mapping[str, torch.Tensor], num_classes: int | None) -> ConversionPlan:
        cfg = self.config
        hidden, in_dim = _shape(state, "_fc1.0.weight", 2)
        heads = _shape(state, "layer1.attn.res_conv.weight", 4)[0]
        kernel = _shape(state, "layer1.attn.res_conv.weight", 4)[2]
        inner = _shape(state, "layer1.attn.to_qkv.weight", 2)[0]
        if inner % 3 or (inner // 3) % heads:
            raise ConversionError(f"layer1.attn.to_qkv.weight has {inner} rows, not 3 x heads x head size for the "
                                  f"{heads} heads of res_conv; the file is not a consistent TransMIL state dict.")
        classes = _shape(state, "_fc2.weight", 2)[0]
        ppeg = {"proj": 0, "proj1": 1, "proj2": 2}
        kernels = [_shape(state, f"pos_layer.{name}.weight", 4)[-1] for name in ppeg]
        if any(k % 2 == 0 for k in kernels):
            raise ConversionError(f"the PPEG kernels {kernels} are not odd; the file is not a TransMIL state dict.")
        landmarks = cfg.num_landmarks or max(1, hidden // 2)
        keys = {"cls_token": "pooling.cls_token"}
        keys.update({f"_fc1.0.{leaf}": f"pooling.fc.0.{leaf}" for leaf in _LEAVES})
        for layer in ("layer1", "layer2"):
            keys.update({f"{layer}.norm.{leaf}": f"pooling.{layer}.norm.{leaf}" for leaf in _LEAVES})
            keys.update({f"{layer}.attn.{part}": f"pooling.{layer}.attn.{part}"
                         for part in ("to_qkv.weight", "to_out.0.weight", "to_out.0.bias", "res_conv.weight")})
        keys.update({f"pos_layer.{name}.{leaf}": f"pooling.ppeg.convs.{i}.{leaf}" for name, i in ppeg.items()
                     for leaf in _LEAVES})
        keys.update({f"norm.{leaf}": f"pooling.norm.{leaf}" for leaf in _LEAVES})
        keys.update({f"_fc2.{leaf}": f"pooling.classifier.{leaf}" for leaf in _LEAVES})
        pooling = {
            "name": "transmil", "hidden_dim": hidden, "heads": heads, "dim_head": inner // 3 // heads,
            "num_landmarks": landmarks, "pinv_iterations": cfg.pinv_iterations, "residual_kernel": kernel,
            "attn_dropout": cfg.attn_dropout, "ppeg_kernels": kernels,
            "nystrom_padding": "keep" if cfg.nystrom_attention == "0.0.9" else "strip",
        }
        notes = []
        if cfg.nystrom_attention == "0.0.9":
            notes.append(
                "Assumed nystrom-attention 0.0.9, the release the official requirements.txt pins (its layers keep the "
                "first n output rows, padding included). If the weights were trained with nystrom-attention 0.0.10 "
                "or later, convert with --option nystrom_attention=0.0.10+: the outputs differ.")
        arch = (f"TransMIL ({in_dim}-d features -> {hidden}, {heads} heads x {inner // 3 // heads}, {landmarks} "
                f"landmarks, nystrom-attention {cfg.nystrom_attention}, {classes} classes)")
        return ConversionPlan(encoder={"name": "identity"}, pooling=pooling, in_shape=(in_dim,), num_classes=classes,
                              keys=keys, architecture=arch, notes=notes)
