"""What a checkpoint is: its file names, its format marker and version, what ``config.json`` records, and how
tensors are laid out in a safetensors file.

A model checkpoint is a folder holding ``model.safetensors`` (the weights, tensors that share storage saved
once) and ``config.json`` (data: the components of :data:`COMPONENT_KINDS` with their options and providers,
input shape, class names, versions).  An interrupted fold keeps its training state beside it in
``state.safetensors``.  Writing is :mod:`milzoo.checkpoint._model` and :mod:`milzoo.checkpoint.state`; reading a
folder from anyone is checked by :mod:`milzoo.checkpoint._verify`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import safetensors.torch
import torch

from milzoo._version import milzoo_version

if TYPE_CHECKING:
    from milzoo.model.mil import MILModel

#: the ``format`` marker of a model's config.json, and the newest ``format_version`` this milzoo writes and reads
FORMAT = "milzoo-model"
FORMAT_VERSION = 1
#: the files of a checkpoint folder
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "state.safetensors"
#: the components a model is made of and a checkpoint records (name, options, provider), in build order
COMPONENT_KINDS = ("encoder", "pooling", "augment", "task")
#: keys milzoo writes into a model's config.json that rebuilding the model does not read (versions, the decision
#: threshold, and what a Hub folder adds: metrics, recipe, model card data, where converted weights came from)
METADATA_KEYS = frozenset({
    "milzoo_version", "label_names", "distributions", "threshold", "epoch", "hub_format_version", "metrics",
    "input", "recipe", "command", "training_environment", "source", "converted_from", "head",
})

_T = TypeVar("_T")


def model_config(model: MILModel, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` of ``model``: its spec, the provider of each component, versions, and ``extra``."""
    spec = model.spec()
    components = {}
    plugins: dict[str, str] = {}
    for kind in COMPONENT_KINDS:
        comp = getattr(model, kind)
        if comp is None or spec.get(kind) is None:  # no augment; the default classification task
            continue
        prov = dict(getattr(type(comp), "provenance", {}) or {})
        components[kind] = {"name": comp.name, **prov}
        if prov.get("distribution"):
            plugins[prov["distribution"]] = prov.get("version", "?")
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "milzoo_version": milzoo_version(),
        **spec,
        "label_names": spec["class_names"],
        "components": components,
        "distributions": plugins,
    }
    if model.float_dtype == torch.float64:
        cfg["dtype"] = "float64"  # trained with train.precision = "fp64": rebuilt in float64 (build_model_from_config)
    if extra:
        cfg.update(extra)
    return cfg


def tensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes (tensors copied to the CPU, contiguous); ``metadata`` goes into its header."""
    return safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def saved_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a checkpoint stores: a tensor shared under several names (tied weights) appears once."""
    seen: set[tuple] = set()
    out = {}
    for k, v in model.state_dict().items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype) if v.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out[k] = v
    return out


def with_tied_names(model: torch.nn.Module, saved: Mapping[str, _T]) -> dict[str, _T]:
    """``saved`` (entries by tensor name, as :func:`saved_state` kept them) with every name of a tensor that
    ``model`` shares under several names filled in from the one that was saved; works on the meta device too."""
    names_of: dict[int, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        names_of.setdefault(id(v), []).append(k)
    out = dict(saved)
    for names in names_of.values():
        present = [n for n in names if n in saved]
        for n in names:
            if n not in out and present:
                out[n] = saved[present[0]]
    return out
