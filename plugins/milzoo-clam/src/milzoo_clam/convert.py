"""Converting a checkpoint trained with the official CLAM code into a milzoo checkpoint folder.

The official code saves ``model.state_dict()`` of ``CLAM_SB`` / ``CLAM_MB``.  Its keys map one by one:

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

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from milzoo.errors import CheckpointError

_ATTN = re.compile(r"^attention_net\.(\d+)\.(attention_a\.0|attention_b\.0|attention_c|module\.(\d+))\.(weight|bias)$")
_FC = re.compile(r"^attention_net\.0\.(weight|bias)$")
_CLS = re.compile(r"^classifiers\.(?:(\d+)\.)?(weight|bias)$")
_INST = re.compile(r"^instance_classifiers\.(\d+)\.(weight|bias)$")

#: the options a recipe's [pooling] table may give that the weights do not determine
FREE_OPTIONS = ("dropout", "k_sample", "subtyping")


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official CLAM checkpoint: a plain state dict of tensors, or refuse it (CheckpointError)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols; a refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; give the path of the .pt file the official CLAM code saved "
                              "(s_<fold>_checkpoint.pt).") from None
    except Exception as exc:  # UnpicklingError for pickled objects; anything torch cannot read safely
        raise CheckpointError(
            f"{path} is not a plain state dict of tensors, so it was not read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}). milzoo only reads weights with "
            "torch.load(weights_only=True), never pickled objects. Save the model's weights with the official code "
            "as it does (torch.save(model.state_dict(), path)) and convert that file."
        ) from None
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        what = type(obj).__name__ if not isinstance(obj, dict) else "a dict whose values are not all tensors"
        raise CheckpointError(
            f"{path} holds {what}, not a plain state dict of tensors (name -> tensor) as the official CLAM code saves "
            "with torch.save(model.state_dict(), path). If it wraps the weights (e.g. {'model': state_dict, "
            "'epoch': ...}), save the inner state dict on its own and convert that file."
        )
    return obj


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` prefixes (``nn.DataParallel``, possibly nested)."""
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def map_official(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Map official keys to the pooling's parameter names; returns ``(pooling_state, info)``.

    ``info`` holds ``name`` (clam_sb / clam_mb), ``size``, ``gated``, ``in_dim`` and ``num_classes``.
    """
    state = strip_prefixes(state)
    mapped: dict[str, torch.Tensor] = {}
    module_idx: dict[int, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state.items():
        if m := _FC.match(key):
            mapped[f"fc.{m.group(1)}"] = value
        elif m := _ATTN.match(key):
            part, inner, leaf = m.group(2), m.group(3), m.group(4)
            if inner is not None:
                module_idx.setdefault(int(inner), {})[leaf] = value
            else:
                mapped[{"attention_a.0": "attn_a", "attention_b.0": "attn_b", "attention_c": "attn_c"}[part]
                       + "." + leaf] = value
        elif m := _CLS.match(key):
            mapped[f"classifiers.{m.group(1)}.{m.group(2)}" if m.group(1) else f"classifiers.{m.group(2)}"] = value
        elif m := _INST.match(key):
            mapped[f"instance_classifiers.{m.group(1)}.{m.group(2)}"] = value
        else:
            unknown.append(key)
    if module_idx:  # ungated Attn_Net: Sequential(Linear, Tanh, [Dropout], Linear)
        if len(module_idx) != 2 or 0 not in module_idx:
            unknown.extend(f"attention_net.*.module.{i}" for i in sorted(module_idx))
        else:
            last = max(module_idx)
            for leaf, value in module_idx[0].items():
                mapped[f"attn_a.{leaf}"] = value
            for leaf, value in module_idx[last].items():
                mapped[f"attn_c.{leaf}"] = value
    if unknown:
        raise CheckpointError(
            f"the checkpoint has keys that are not CLAM_SB / CLAM_MB parameters: {', '.join(unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}. Convert a state dict saved by the official CLAM code "
            "(models/model_clam.py); other models (MIL_fc, TransMIL, ...) are not CLAM."
        )
    need = ("fc.weight", "attn_a.weight", "attn_c.weight", "instance_classifiers.0.weight")
    missing = [k for k in need if k not in mapped]
    if missing or not any(k.startswith("classifiers.") for k in mapped):
        raise CheckpointError(
            f"the checkpoint lacks CLAM parameters ({', '.join(missing) or 'classifiers.*'}); convert a complete "
            "state dict saved by the official CLAM code."
        )
    hidden, in_dim = mapped["fc.weight"].shape
    attn_hidden = mapped["attn_a.weight"].shape[0]
    size = next((s for s, dims in {"small": (512, 256), "big": (512, 384)}.items()
                 if dims == (hidden, attn_hidden)), None)
    if size is None:
        raise CheckpointError(
            f"the checkpoint's layer sizes [{in_dim}, {hidden}, {attn_hidden}] match neither official size preset "
            "(small = [d, 512, 256], big = [d, 512, 384]); it was not trained with the official CLAM code's presets."
        )
    num_classes = len({k.split(".")[1] for k in mapped if k.startswith("instance_classifiers.")})
    branches = mapped["attn_c.weight"].shape[0]
    per_class = any(re.match(r"^classifiers\.\d+\.", k) for k in mapped)
    if branches == 1 and not per_class:
        name = "clam_sb"
    elif branches == num_classes and per_class:
        name = "clam_mb"
    elif branches == num_classes and not per_class:
        raise CheckpointError(
            "the checkpoint is a CLAM_MB trained with the official code before its 2024-04 fix (one "
            "Linear(512, k) bag classifier applied to every branch); milzoo implements the fixed model (one "
            "Linear(512, 1) per class), so these weights cannot be converted. Retrain with the current official code."
        )
    else:
        raise CheckpointError(
            f"the checkpoint has {branches} attention branches and {num_classes} instance classifiers, which is "
            "neither CLAM_SB (1 branch) nor CLAM_MB (one per class); convert a state dict of the official CLAM code."
        )
    gated = "attn_b.weight" in mapped
    info = {"name": name, "size": size, "gated": gated, "in_dim": int(in_dim), "num_classes": int(num_classes)}
    return mapped, info


def _pooling_options(info: dict[str, Any], recipe: str | Path | None, options: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    if recipe is not None:
        import tomllib

        try:
            with open(recipe, "rb") as fh:
                table = dict(tomllib.load(fh).get("pooling", {}))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CheckpointError(f"could not read the recipe {recipe} ({exc}); give a readable TOML recipe whose "
                                  "[pooling] table is the CLAM model's.") from None
        name = table.pop("name", info["name"])
        if name.split(":")[-1] != info["name"]:
            raise CheckpointError(
                f"the recipe's pooling is {name!r} but the checkpoint holds a {info['name']!r} model; use a recipe "
                f"with [pooling] name = \"{info['name']}\" (or none)."
            )
        for key in ("size", "gated"):
            if key in table and table[key] != info[key]:
                raise CheckpointError(
                    f"the recipe sets pooling.{key} = {table[key]!r} but the checkpoint's weights are {key} = "
                    f"{info[key]!r}; remove that line or fix it."
                )
    table.update({k: v for k, v in options.items() if v is not None})
    table.update(size=info["size"], gated=info["gated"])
    return {"name": info["name"], **table}


def convert_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    *,
    recipe: str | Path | None = None,
    class_names: list[str] | None = None,
    **options: Any,
) -> Path:
    """Convert the official CLAM checkpoint ``src`` into the milzoo checkpoint folder ``out_dir``.

    The model is an ``identity`` encoder and a ``clam_sb`` / ``clam_mb`` pooling whose options come from the
    weights (size, gate, SB/MB), then the ``[pooling]`` table of ``recipe``, then ``options`` (``dropout``,
    ``k_sample``, ``subtyping``).  The result loads with :func:`milzoo.load_model`.
    """
    from milzoo.checkpoint import save_model
    from milzoo.model.build import build_components

    pooling_state, info = map_official(read_official(src))
    table = _pooling_options(info, recipe, options)
    if class_names is not None and len(class_names) != info["num_classes"]:
        raise CheckpointError(
            f"{len(class_names)} class names were given but the checkpoint has {info['num_classes']} classes; "
            "give one name per class, in the order of the official label dictionary."
        )
    model = build_components(
        encoder={"name": "identity"}, pooling=table, in_shape=(info["in_dim"],), num_classes=info["num_classes"],
        class_names=class_names,
    )
    expected = model.pooling.state_dict()
    if set(expected) != set(pooling_state):
        raise CheckpointError(
            f"the checkpoint's parameters do not match a {info['name']} model: missing "
            f"{sorted(set(expected) - set(pooling_state))}, unexpected {sorted(set(pooling_state) - set(expected))}; "
            "convert a state dict saved by the official CLAM code."
        )
    for key, value in pooling_state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"parameter {key} has shape {tuple(value.shape)} in the checkpoint but {tuple(expected[key].shape)} "
                "in the model; the checkpoint is not a consistent CLAM state dict."
            )
    model.pooling.load_state_dict({k: v.to(expected[k].dtype) for k, v in pooling_state.items()}, strict=True)
    model.eval()
    return save_model(model, out_dir, extra_config={"converted_from": {"format": "official CLAM state dict",
                                                                        "file": Path(src).name}})
