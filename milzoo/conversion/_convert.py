"""``milzoo convert``: another toolkit's weights into a milzoo Hub folder, through a registered converter.

One path for every format: read the file safely (:mod:`milzoo.conversion._source`), unwrap and strip what the
format declares, let the converter plan the mapping (:class:`~milzoo.components.converter.ConversionPlan`), refuse
missing, unexpected and misshapen keys by name, build the model through the registry, load every tensor strictly,
and write a Hub folder whose ``config.json`` records where the weights came from (``converted_from``) and
whether the classification head is trained (``head``).  The folder is loaded back before returning, and must
give back exactly the tensors that were converted.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import ValidationError

from milzoo._untrusted import shown
from milzoo.components.converter import ConversionPlan, Converter
from milzoo.errors import ConversionError
from milzoo.conversion._source import read_state_dict, source_file, strip_prefixes
from milzoo.model.build import build_components
from milzoo.model.mil import MILModel
from milzoo.registry import _table as registry

log = logging.getLogger(__name__)

#: how many names an error lists before "and N more"
_LISTED = 12


@dataclass
class Converted:
    """A converted model (eval mode) and the ``config.json`` keys that record its origin."""

    model: MILModel
    plan: ConversionPlan
    record: dict[str, Any]


def _names(keys: Sequence[str]) -> str:
    shown_keys = ", ".join(shown(k, 80) for k in keys[:_LISTED])
    return shown_keys + (f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else "")


def get_converter(fmt: str) -> type[Converter]:
    """The converter registered as ``fmt`` (or ``"distribution:fmt"``); an unknown name lists the known ones."""
    return registry.get_component("converter", fmt)


def _options(cls: type[Converter], options: dict[str, Any] | None) -> Any:
    try:
        return cls.Config(**(options or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}"
                             for e in exc.errors(include_url=False))
        known = ", ".join(f"{k} (default {f.default!r})" for k, f in cls.Config.model_fields.items()) or "none"
        raise ConversionError(f"invalid options for the {cls.name!r} converter: {problems}. Its options are: "
                              f"{known}.") from None


def _class_count(num_classes: int | None, class_names: Sequence[str] | None) -> int | None:
    if class_names is not None:
        names = list(class_names)
        if len(names) < 2 or any(not isinstance(n, str) or not n.strip() for n in names) or \
                len(set(names)) != len(names):
            raise ConversionError(f"class names must be at least two, distinct and non-empty (got {shown(names, 120)}); "
                                  "give one name per class, in the order of the labels the weights were trained with.")
        if num_classes is not None and num_classes != len(names):
            raise ConversionError(f"{num_classes} classes were asked for but {len(names)} class names were given; "
                                  "give one or the other, or make them agree.")
        return len(names)
    if num_classes is not None and num_classes < 2:
        raise ConversionError(f"a bag classifier needs at least 2 classes, not {num_classes}.")
    return num_classes


def _check_keys(fmt: str, plan: ConversionPlan, state: dict[str, torch.Tensor]) -> None:
    unexpected = [k for k in state if k not in plan.keys and k not in plan.dropped]
    missing = [k for k in plan.keys if k not in state]
    if not (unexpected or missing):
        return
    parts = []
    if missing:
        parts.append(f"missing {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected {_names(unexpected)}")
    raise ConversionError(
        f"the weights do not match the {fmt!r} format's {plan.architecture} that their shapes describe: "
        f"{'; '.join(parts)}. Convert a complete state dict saved by the official code of that format (`milzoo list "
        "converters` says which code each format reads), or name the right format.")


def _dtype(plan: ConversionPlan, state: dict[str, torch.Tensor]) -> torch.dtype:
    """float64 when every tensor is (a float64 reference stays exact), else float32."""
    float64 = all(state[k].dtype == torch.float64 for k in plan.keys)
    return torch.float64 if float64 else torch.float32


def _tensors(fmt: str, plan: ConversionPlan, state: dict[str, torch.Tensor], model: MILModel,
             conv: type[Converter]) -> dict[str, torch.Tensor]:
    """The model's state dict filled from ``state`` (every foreign key checked) and the plan's new tensors."""
    target = model.state_dict()
    covered = list(plan.keys.values()) + list(plan.new)
    if sorted(covered) != sorted(target):
        unset = sorted(set(target) - set(covered))
        extra = sorted({k for k in covered if covered.count(k) > 1} | (set(covered) - set(target)))
        raise ConversionError(
            f"the {fmt!r} converter of {conv.provenance.get('distribution', '?')} does not cover the model it "
            f"builds (unset: {_names(unset) or 'none'}; unknown or mapped twice: {_names(extra) or 'none'}). This is a "
            "bug of that converter; report it to its author.")
    out: dict[str, torch.Tensor] = {}
    bad_shape, bad_kind, not_finite = [], [], []
    for key, dest in plan.keys.items():
        value = state[key]
        if value.layout != torch.strided or value.is_quantized or not value.is_floating_point():
            bad_kind.append(f"{shown(key, 80)} ({value.dtype}, {value.layout})")
            continue
        if tuple(value.shape) != tuple(target[dest].shape):
            bad_shape.append(f"{shown(key, 80)} is {tuple(value.shape)}, needs {tuple(target[dest].shape)}")
            continue
        if value.numel() and not bool(torch.isfinite(value).all()):
            not_finite.append(shown(key, 80))
            continue
        out[dest] = value.detach().to(dtype=target[dest].dtype).clone()
    if bad_kind:
        raise ConversionError(f"these weights are not dense floating-point tensors: {', '.join(bad_kind[:_LISTED])}; "
                              "they cannot be parameters of the model.")
    if bad_shape:
        raise ConversionError(
            f"these weights have shapes that do not fit the {fmt!r} format's {plan.architecture}: "
            f"{'; '.join(bad_shape[:_LISTED])}{' ...' if len(bad_shape) > _LISTED else ''}. The file is not one "
            "consistent model of that format.")
    if not_finite:
        raise ConversionError(f"these weights hold NaN or infinite values: {_names(not_finite)}; the model that saved "
                              "them diverged or the file is damaged.")
    for key, value in plan.new.items():
        out[key] = value.detach().to(dtype=target[key].dtype).clone()
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_model(fmt: str, source: str | Path, *, num_classes: int | None = None,
                  class_names: Sequence[str] | None = None, options: dict[str, Any] | None = None) -> Converted:
    """Convert the weights file ``source`` of format ``fmt`` into a milzoo model in memory (eval mode)."""
    conv_cls = get_converter(fmt)
    converter = conv_cls(_options(conv_cls, options))
    wanted = _class_count(num_classes, class_names)
    path = source_file(source)
    state, wrapper = read_state_dict(path, wrappers=conv_cls.wrappers, hint=conv_cls.extract_hint)
    state, removed = strip_prefixes(state, conv_cls.prefixes)
    plan = converter.plan(state, wanted)
    if wanted is not None and plan.num_classes != wanted:
        raise ConversionError(
            f"the weights hold a trained {plan.num_classes}-class head, but {wanted} classes were asked for; leave "
            "out --num-classes, or give one class name per class of the head, in the order it was trained with.")
    _check_keys(conv_cls.name, plan, state)
    try:
        model = build_components(encoder=plan.encoder, pooling=plan.pooling, in_shape=tuple(plan.in_shape),
                                 num_classes=plan.num_classes, class_names=list(class_names) if class_names else None)
    except ValidationError as exc:
        raise ConversionError(f"the {conv_cls.name!r} converter planned options that the installed components refuse "
                              f"({shown(str(exc), 400)}); check the converter's options.") from None
    model = model.to(_dtype(plan, state))
    model.load_state_dict(_tensors(conv_cls.name, plan, state, model, conv_cls), strict=True)
    model.eval()
    prov = conv_cls.provenance or {}
    record: dict[str, Any] = {
        "converted_from": {
            "format": conv_cls.name,
            "converter": {"distribution": prov.get("distribution", "?"), "version": prov.get("version", "?")},
            "source": conv_cls.source,
            "file": path.name,
            "sha256": _sha256(path),
            "wrapper": wrapper,
            "prefixes_removed": removed,
            "dropped": sorted(plan.dropped),
            "architecture": plan.architecture,
            "options": converter.config.model_dump(mode="json"),
            "notes": list(plan.notes),
            "untrained_parameters": sorted(plan.new),
        },
        "head": plan.head,
    }
    for note in plan.notes:
        log.info("%s: %s", conv_cls.name, note)
    return Converted(model, plan, record)


def convert(fmt: str, source: str | Path, out_dir: str | Path, *, num_classes: int | None = None,
            class_names: Sequence[str] | None = None, options: dict[str, Any] | None = None,
            repo_id: str | None = None, license: str | None = None,  # noqa: A002 - the Hub's field name
            tags: Sequence[str] = (), overwrite: bool = False) -> Path:
    """Convert the weights file ``source`` (format ``fmt``, see ``milzoo list converters``) into the Hub folder
    ``out_dir``; returns it.  ``milzoo.load_pretrained(out_dir)`` loads the result, ``milzoo push`` shares it.

    ``num_classes`` / ``class_names`` size and name the classification head (needed when the weights have none);
    ``options`` are the converter's own (``Converter.Config``).  Nothing is downloaded.
    """
    from milzoo.hub._folders import load_folder, save_pretrained

    done = convert_model(fmt, source, num_classes=num_classes, class_names=class_names, options=options)
    out = save_pretrained(done.model, out_dir, repo_id=repo_id, license=license,
                          tags=["converted", *tags], overwrite=overwrite, extra_config=done.record)
    with warnings.catch_warnings():  # the untrained-head warning is for users of the folder, not for this check
        warnings.simplefilter("ignore")
        back = load_folder(out)
    mine, theirs = done.model.state_dict(), back.state_dict()
    if set(mine) != set(theirs) or any(not torch.equal(mine[k], theirs[k]) for k in mine):
        raise ConversionError(f"{out} does not load back to the converted weights; this is a bug of milzoo, please "
                              "report it.")
    return out
