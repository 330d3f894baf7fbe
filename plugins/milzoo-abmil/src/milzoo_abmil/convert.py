"""MIL-Lab's ABMIL (``mahmoodlab/MIL-Lab``, ``src/models/abmil.py``) and its FEATHER weights, as milzoo's ABMIL.

MIL-Lab's ABMIL is ``patch_embed`` (``create_mlp``: ``num_fc_layers`` Linear layers, each followed by ReLU, with
Dropout between them but not after the last), gated or plain attention with dropout after ``tanh`` and after
``sigmoid``, softmax over the instances of the embedded features, and ``Linear(embed_dim, k)``.  In milzoo that is
the ``mlp`` encoder (``last_dropout = false``) and the ``abmil`` pooling (``attn_dropout``):

===========================================  =================================
MIL-Lab (after ``model.`` / ``module.``)     milzoo
===========================================  =================================
``patch_embed.<3i>.{weight,bias}``           ``encoder.net.<j>`` (the i-th Linear layer)
``global_attn.attention_a.0.*``              ``pooling.attn_V`` (gated)
``global_attn.attention_b.0.*``              ``pooling.attn_U`` (gated)
``global_attn.attention_c.*``                ``pooling.attn_w`` (gated)
``global_attn.module.0.*`` / ``module.3.*``  ``pooling.attn_V`` / ``pooling.attn_w`` (plain)
``classifier.*``                             ``pooling.classifier``
===========================================  =================================

The FEATHER checkpoints on the Hub (``MahmoodLab/abmil.base.<encoder>.pc108-24k``) have no ``classifier``: MIL-Lab
itself always builds a new head for the task at hand.  So does this converter, with MIL-Lab's initialisation
(Kaiming-uniform weights, zero bias), and the Hub folder is marked ``head: "untrained"``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping

import torch
from pydantic import Field

from milzoo.components import ComponentConfig, ConversionPlan, Converter
from milzoo.errors import ConversionError

log = logging.getLogger(__name__)

_EMBED = re.compile(r"^patch_embed\.(\d+)\.weight$")
_LEAVES = ("weight", "bias")


def mil_lab_head(num_classes: int, embed_dim: int, seed: int) -> dict[str, torch.Tensor]:
    """A new head as MIL-Lab's ``initialize_classifier``: ``kaiming_uniform_(nonlinearity="relu")``, zero bias.

    With ``a = 0`` the bound is ``sqrt(2) * sqrt(3 / fan_in) = sqrt(6 / embed_dim)``; ``seed`` makes it reproducible.
    """
    gen = torch.Generator().manual_seed(seed)
    bound = math.sqrt(6.0 / embed_dim)
    weight = torch.empty(num_classes, embed_dim).uniform_(-bound, bound, generator=gen)
    return {"pooling.classifier.weight": weight, "pooling.classifier.bias": torch.zeros(num_classes)}


class MILLabABMILConverter(Converter):
    """MIL-Lab's ABMIL weights (FEATHER: MahmoodLab/abmil.base.*.pc108-24k, which ship without a head)."""

    name = "mil-lab-abmil"
    source = "https://github.com/mahmoodlab/MIL-Lab (src/models/abmil.py)"
    #: MIL-Lab's own loader (builder_utils.load_state_dict) looks for these, in this order
    wrappers = ("state_dict_ema", "model_ema", "state_dict", "model")
    #: ABMILModel (the Hugging Face wrapper) holds the model as ``self.model``
    prefixes = ("module.", "model.")
    extract_hint = ("convert the Hub repository's model.safetensors (or pytorch_model.bin), or save the bare "
                    "weights with MIL-Lab's code (torch.save(model.state_dict(), path)) and convert that file")

    class Config(ComponentConfig):
        dropout: float = Field(default=0.25, ge=0.0, lt=1.0,
                               description="MIL-Lab's dropout (its base config: 0.25), in the attention network and "
                               "between patch-embedding layers; it acts only when the model is trained further")
        new_head: bool = Field(default=False,
                               description="replace a classification head the weights have by a new, untrained "
                               "one (MIL-Lab's create_model does this unless keep_classifier=True)")
        seed: int = Field(default=0, ge=0, description="seed of a new head's initialisation")

    def plan(self, state: Mapping[str, torch.Tensor], num_classes: int | None) -> ConversionPlan:
        cfg = self.config
        layers = sorted(int(m.group(1)) for k in state if (m := _EMBED.match(k)))
        if not layers or "patch_embed.0.weight" not in state:
            raise ConversionError(
                "the weights have no patch_embed.0.weight, the first layer of every MIL-Lab ABMIL (after removing a "
                "'model.' prefix); they are not MIL-Lab ABMIL weights. Name another format (`milzoo list "
                "converters`).")
        n_fc = len(layers)
        dims = []
        for i in range(n_fc):
            weight = state.get(f"patch_embed.{3 * i}.weight")
            dims.append(int(weight.shape[0]) if weight is not None and weight.ndim == 2 else int(state[
                "patch_embed.0.weight"].shape[0]))
        in_dim, embed = int(state["patch_embed.0.weight"].shape[1]), dims[-1]
        gated = "global_attn.attention_a.0.weight" in state
        first = "global_attn.attention_a.0.weight" if gated else "global_attn.module.0.weight"
        if first not in state or state[first].ndim != 2:
            raise ConversionError(f"the weights have no attention network ({first!r}); they are not MIL-Lab ABMIL "
                                  "weights.")
        attn_dim = int(state[first].shape[0])
        between = n_fc > 1 and cfg.dropout > 0
        step = 3 if between else 2  # the mlp encoder: Linear, ReLU[, Dropout] per layer, none after the last
        keys = {f"patch_embed.{3 * i}.{leaf}": f"encoder.net.{step * i}.{leaf}" for i in range(n_fc) for leaf in _LEAVES}
        parts = ((("attention_a.0", "attn_V"), ("attention_b.0", "attn_U"), ("attention_c", "attn_w")) if gated
                 else (("module.0", "attn_V"), ("module.3", "attn_w")))
        keys.update({f"global_attn.{theirs}.{leaf}": f"pooling.{ours}.{leaf}" for theirs, ours in parts
                     for leaf in _LEAVES})
        head = [k for k in state if k.startswith("classifier.")]
        notes, new, dropped = [], {}, []
        if head and not cfg.new_head:
            weight = state.get("classifier.weight")
            if weight is None or weight.ndim != 2:
                raise ConversionError("the weights' classifier has no 2-d classifier.weight; they are not a complete "
                                      "MIL-Lab ABMIL state dict.")
            k = int(weight.shape[0])
            if num_classes is not None and num_classes != k:
                raise ConversionError(
                    f"the weights hold a trained {k}-class head but {num_classes} classes were asked for; leave out "
                    "--num-classes (and give one class name per class of the head), or replace the head by a new, "
                    "untrained one with --option new_head=true.")
            keys.update({f"classifier.{leaf}": f"pooling.classifier.{leaf}" for leaf in _LEAVES})
        else:
            if num_classes is None:
                why = ("MIL-Lab's ABMIL weights ship without a classification head (FEATHER)" if not head
                       else "new_head = true replaces the weights' head")
                raise ConversionError(f"{why}, so the number of classes of the new head must be given: "
                                      "--num-classes K or --class-names a,b,... (num_classes= or class_names= in "
                                      "Python).")
            k = num_classes
            new = mil_lab_head(k, embed, cfg.seed)
            if head:
                dropped = head
                notes.append(f"The weights' own {int(state['classifier.weight'].shape[0])}-class head was discarded "
                             "(new_head = true).")
            else:
                notes.append("The weights have no classification head (MIL-Lab's FEATHER checkpoints ship without "
                             "one).")
            notes.append(f"A new {k}-class head was initialised as MIL-Lab's initialize_classifier does (Kaiming-"
                         f"uniform weights, zero bias; seed {cfg.seed}): it is untrained, so fine-tune the model "
                         "before using its class predictions; the bag features and attention are the pretrained "
                         "ones.")
        encoder = {"name": "mlp", "dims": dims}
        if between:
            encoder.update(dropout=cfg.dropout, last_dropout=False)
        pooling = {"name": "abmil", "attn_hidden": attn_dim, "gated": gated, "attn_dropout": cfg.dropout}
        arch = (f"MIL-Lab ABMIL ({'gated' if gated else 'plain'} attention, {n_fc} patch-embedding "
                f"layer{'s' if n_fc > 1 else ''}, {in_dim}-d features -> {embed}, attention {attn_dim}, "
                f"{f'{k}-class head' if not new else 'no trained head'})")
        return ConversionPlan(encoder=encoder, pooling=pooling, in_shape=(in_dim,), num_classes=k, keys=keys,
                              architecture=arch, new=new, dropped=dropped, notes=notes)
