"""Converting a checkpoint trained with the official CLAM code (``milzoo convert clam``, alias ``milzoo clam convert``).

The official code saves ``model.state_dict()`` of ``CLAM_SB`` / ``CLAM_MB`` (``torch.save``).  Its keys map one by
one:

============================================  =====================================
official                                      milzoo (``pooling.`` + ...)
============================================  =====================================
``attention_net.0.{weight,bias}``             ``fc``
``attention_net.<i>.attention_a.0.*``          ``attn_a`` (gated)
``attention_net.<i>.attention_b.0.*``          ``attn_b`` (gated)
``attention_net.<i>.attention_c.*``            ``attn_c`` (gated)
``attention_net.<i>.module.0.*``               ``attn_a`` (not gated)
``attention_net.<i>.module.<last>.*``          ``attn_c`` (not gated; 2 without dropout, 3 with)
``classifiers.*`` / ``classifiers.<c>.*``      ``classifiers`` (SB) / ``classifiers.<c>`` (MB)
``instance_classifiers.<c>.*``                 ``instance_classifiers.<c>``
============================================  =====================================

``<i>`` is 3 in the current code (Linear, ReLU, Dropout, attention) and 2 in early versions without dropout;
``module.`` prefixes (``nn.DataParallel``) are removed first.  The size preset, the gate, SB/MB, the
embedding dimension and the number of classes are read from the tensors' shapes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from milzoo.components import ComponentConfig, ConversionPlan, Converter, tensor_shape
from milzoo.errors import CheckpointError, ConversionError

log = logging.getLogger(__name__)

_ATTN = re.compile(r"^attention_net\.(\d+)\.(attention_a\.0|attention_b\.0|attention_c|module\.(\d+))\.(weight|bias)$")
_MB_CLS = re.compile(r"^classifiers\.(\d+)\.weight$")
_LEAVES = ("weight", "bias")
#: the official size presets: (hidden, attention hidden)
_SIZES = {"small": (512, 256), "big": (512, 384)}

#: the options a recipe's [pooling] table may give that the weights do not determine
FREE_OPTIONS = ("dropout", "k_sample", "subtyping")


class CLAMConverter(Converter):
    """CLAM_SB / CLAM_MB state dicts saved by the official CLAM code (s_<fold>_checkpoint.pt)."""

    name = "clam"
    source = "https://github.com/mahmoodlab/CLAM (models/model_clam.py)"
    extract_hint = ("save the weights as the official code does (torch.save(model.state_dict(), path), the "
                    "s_<fold>_checkpoint.pt files of its results folder) and convert that file")

    class Config(ComponentConfig):
        dropout: float | None = Field(default=None, ge=0.0, lt=1.0,
                                      description="pooling.dropout, the official --drop_out (None: 0.25, or 0 when "
                                      "the weights show an ungated model trained without it)")
        k_sample: int | None = Field(default=None, gt=0, description="pooling.k_sample, the official --B (None: 8)")
        subtyping: bool | None = Field(default=None, description="pooling.subtyping, the official --subtyping "
                                       "(None: false)")

    def plan(self, state: Mapping[str, torch.Tensor], num_classes: int | None) -> ConversionPlan:
        keys, info = official_keys(state)
        options = {k: v for k, v in self.config.model_dump().items() if v is not None}
        if info["attn_dropout"] is False:  # ungated Attn_Net without its Dropout: trained with --drop_out 0
            if options.get("dropout", 0.0) > 0:
                raise ConversionError(
                    f"the checkpoint's ungated attention has no dropout layer (module.{info['attn_last']}), so it was "
                    f"trained with --drop_out 0, but dropout = {options['dropout']} was asked for; leave it out.")
            options["dropout"] = 0.0
        pooling = {"name": info["name"], **options, "size": info["size"], "gated": info["gated"]}
        arch = (f"{'CLAM_MB' if info['name'] == 'clam_mb' else 'CLAM_SB'} ({'gated' if info['gated'] else 'ungated'} "
                f"attention, size {info['size']}, {info['in_dim']}-d features, {info['num_classes']} classes)")
        return ConversionPlan(encoder={"name": "identity"}, pooling=pooling, in_shape=(info["in_dim"],),
                              num_classes=info["num_classes"], keys={k: "pooling." + v for k, v in keys.items()},
                              architecture=arch)


def _shape(state: Mapping[str, torch.Tensor], key: str, ndim: int = 2) -> tuple[int, ...]:
    return tensor_shape(state, key, ndim, "official CLAM_SB / CLAM_MB (models/model_clam.py)")


def official_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, str], dict[str, Any]]:
    """Every key an official CLAM state dict of this architecture holds, mapped to the pooling's parameter names.

    The architecture comes from the shapes: ``info`` holds ``name`` (clam_sb / clam_mb), ``size``, ``gated``,
    ``in_dim``, ``num_classes`` and, for ungated attention, whether its dropout layer was there.
    """
    hidden, in_dim = _shape(state, "attention_net.0.weight")
    found = [(int(m.group(1)), m.group(2), m.group(3)) for k in state if (m := _ATTN.match(k))]
    if not found:
        raise ConversionError("the checkpoint has no attention network (attention_net.<i>.attention_a / .module keys); "
                              "it is not a CLAM_SB / CLAM_MB state dict of the official code.")
    idx = found[0][0]
    gated = any(part == "attention_a.0" for _, part, _ in found)
    keys = {f"attention_net.0.{leaf}": f"fc.{leaf}" for leaf in _LEAVES}
    info: dict[str, Any] = {"gated": gated, "attn_dropout": None, "attn_last": None}
    if gated:
        attn_hidden = _shape(state, f"attention_net.{idx}.attention_a.0.weight")[0]
        branches = _shape(state, f"attention_net.{idx}.attention_c.weight")[0]
        for part, ours in (("attention_a.0", "attn_a"), ("attention_b.0", "attn_b"), ("attention_c", "attn_c")):
            keys.update({f"attention_net.{idx}.{part}.{leaf}": f"{ours}.{leaf}" for leaf in _LEAVES})
    else:
        inner = sorted({int(i) for _, part, i in found if i is not None and i != "0"})
        last = inner[-1] if inner else 3
        attn_hidden = _shape(state, f"attention_net.{idx}.module.0.weight")[0]
        branches = _shape(state, f"attention_net.{idx}.module.{last}.weight")[0]
        keys.update({f"attention_net.{idx}.module.0.{leaf}": f"attn_a.{leaf}" for leaf in _LEAVES})
        keys.update({f"attention_net.{idx}.module.{last}.{leaf}": f"attn_c.{leaf}" for leaf in _LEAVES})
        info.update(attn_dropout=last == 3, attn_last=last)
    size = next((s for s, dims in _SIZES.items() if dims == (hidden, attn_hidden)), None)
    if size is None:
        raise ConversionError(
            f"the checkpoint's layer sizes [{in_dim}, {hidden}, {attn_hidden}] match neither official size preset "
            "(small = [d, 512, 256], big = [d, 512, 384]); it was not trained with the official CLAM code's presets.")
    per_class = sorted(int(m.group(1)) for k in state if (m := _MB_CLS.match(k)))
    if per_class:
        num_classes = per_class[-1] + 1
        keys.update({f"classifiers.{c}.{leaf}": f"classifiers.{c}.{leaf}" for c in range(num_classes) for leaf in _LEAVES})
    else:
        num_classes = _shape(state, "classifiers.weight")[0]
        keys.update({f"classifiers.{leaf}": f"classifiers.{leaf}" for leaf in _LEAVES})
    keys.update({f"instance_classifiers.{c}.{leaf}": f"instance_classifiers.{c}.{leaf}"
                 for c in range(num_classes) for leaf in _LEAVES})
    if branches == 1 and not per_class:
        name = "clam_sb"
    elif branches == num_classes and per_class:
        name = "clam_mb"
    elif branches == num_classes and not per_class:
        raise ConversionError(
            "the checkpoint is a CLAM_MB trained with the official code before its 2024-04 fix (one "
            "Linear(512, k) bag classifier applied to every branch); milzoo implements the fixed model (one "
            "Linear(512, 1) per class), so these weights cannot be converted. Retrain with the current official code.")
    else:
        raise ConversionError(
            f"the checkpoint has {branches} attention branches and {num_classes} classes, which is neither CLAM_SB "
            "(1 branch) nor CLAM_MB (one per class); convert a state dict of the official CLAM code.")
    info.update(name=name, size=size, in_dim=int(in_dim), num_classes=int(num_classes))
    return keys, info


# ---------------------------------------------------------------------------------------------- the older API


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official CLAM checkpoint: a plain state dict of tensors, or refuse it (CheckpointError)."""
    from milzoo.conversion import read_state_dict

    state, _ = read_state_dict(path, wrappers=CLAMConverter.wrappers, hint=CLAMConverter.extract_hint)
    return state


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` prefixes (``nn.DataParallel``, possibly nested)."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def map_official(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map official keys to the pooling's parameter names; returns ``(pooling_state, info)``."""
    state = strip_prefixes(state)
    keys, info = official_keys(state)
    unknown = [k for k in state if k not in keys]
    if unknown:
        raise ConversionError(f"the checkpoint has keys that are not CLAM_SB / CLAM_MB parameters: "
                              f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}.")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ConversionError(f"the checkpoint lacks CLAM parameters: {', '.join(missing[:8])}.")
    return {ours: state[theirs] for theirs, ours in keys.items()}, info


def _recipe_options(recipe: str | Path) -> dict[str, Any]:
    """The options of a recipe's [pooling] table that the weights do not fix (the others are checked later)."""
    import tomllib

    try:
        with open(recipe, "rb") as fh:
            table = dict(tomllib.load(fh).get("pooling", {}))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(f"could not read the recipe {recipe} ({exc}); give a readable TOML recipe whose "
                              "[pooling] table is the CLAM model's.") from None
    return table


def convert_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    *,
    recipe: str | Path | None = None,
    class_names: list[str] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Convert the official CLAM checkpoint ``src`` into the milzoo Hub folder ``out_dir`` (``milzoo convert clam``).

    The model is an ``identity`` encoder and a ``clam_sb`` / ``clam_mb`` pooling whose options come from the
    weights (size, gate, SB/MB), then the ``[pooling]`` table of ``recipe``, then ``options`` (``dropout``,
    ``k_sample``, ``subtyping``).  The result loads with :func:`milzoo.load_pretrained` and :func:`milzoo.load_model`.
    """
    from milzoo.conversion import convert

    chosen: dict[str, Any] = {}
    if recipe is not None:
        table = _recipe_options(recipe)
        _, info = official_keys(strip_prefixes(read_official(src)))
        name = table.pop("name", info["name"])
        if str(name).split(":")[-1] != info["name"]:
            raise CheckpointError(f"the recipe's pooling is {name!r} but the checkpoint holds a {info['name']!r} "
                                  f"model; use a recipe with [pooling] name = \"{info['name']}\" (or none).")
        for key in ("size", "gated"):
            if key in table and table.pop(key) != info[key]:
                raise CheckpointError(f"the recipe sets pooling.{key} but the checkpoint's weights are {key} = "
                                      f"{info[key]!r}; remove that line or fix it.")
        chosen.update(table)
    chosen.update({k: v for k, v in options.items() if v is not None})
    return convert("clam", src, out_dir, class_names=class_names, options=chosen, overwrite=overwrite)
