"""Loading a checkpoint that may come from anyone (a Hub download, a colleague's folder).

A checkpoint is ``config.json`` (data) + ``model.safetensors`` (tensors).  Nothing
in it is executed and nothing is unpickled.  Before any memory is allocated:

1. ``config.json`` must be a JSON object of bounded size and depth whose fields
   have the right types and ranges (:class:`CheckpointSpec`);
2. every component must resolve to the distribution that ``config.json``
   records as its provider (:func:`resolve_components`), never to another
   distribution that happens to register the same name;
3. the model is built on the meta device (no memory) and every tensor's name,
   shape and dtype is compared with the safetensors header
   (:func:`check_against_header`).

Only then is the model built for real and the weights loaded; weights that
are not finite are refused (parameters) or warned about (buffers).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import safetensors
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from milzoo.registry import _table as registry
from milzoo.errors import CheckpointError
from milzoo.registry._provenance import missing_provider_text
from milzoo._untrusted import shown, valid_distribution

#: the largest integer any shape or class count in a config may hold
MAX_DIM = 2**31 - 1

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


class CheckpointWarning(UserWarning):
    """A checkpoint loaded but holds something suspicious (e.g. non-finite buffers)."""


class _ComponentSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=registry.NAME_PATTERN.pattern, max_length=100)


class CheckpointSpec(BaseModel):
    """The fields of config.json that rebuilding a model reads, with their types and ranges."""

    model_config = ConfigDict(extra="allow")
    format: str
    format_version: int = Field(ge=1)
    encoder: _ComponentSpec
    pooling: _ComponentSpec
    augment: _ComponentSpec | None = None
    in_shape: list[int] = Field(min_length=1, max_length=4)
    num_classes: int = Field(ge=2, le=MAX_DIM)
    class_names: list[str] | None = None
    standardize: bool = False
    channels_last: bool = False
    #: the weights' float type: float64 for models trained with train.precision = "fp64", else float32
    dtype: Literal["float32", "float64"] = "float32"
    components: dict[str, Any] = Field(default_factory=dict)

    @field_validator("in_shape")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(not 1 <= s <= MAX_DIM for s in v):
            raise ValueError(f"every size must be between 1 and {MAX_DIM}")
        return v


def validate_spec(cfg: Any, where: str = "config.json") -> CheckpointSpec:
    from milzoo.checkpoint._model import FORMAT, FORMAT_VERSION

    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where} holds a JSON {type(cfg).__name__}, not an object; it is not a milzoo "
                              "checkpoint config.")
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a milzoo model config (format={shown(cfg.get('format'))}).")
    version = cfg.get("format_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"this checkpoint uses format version {version}, newer than this milzoo supports "
            f"({FORMAT_VERSION}); upgrade milzoo (`pip install -U milzoo`)."
        )
    try:
        spec = CheckpointSpec.model_validate(cfg)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']} (got {shown(e.get('input'), 40)})"
            for e in exc.errors(include_url=False)[:6]
        )
        raise CheckpointError(f"{where} is invalid: {problems}. The checkpoint is damaged or was not written by "
                              "milzoo.") from None
    if spec.class_names is not None and len(spec.class_names) != spec.num_classes:
        raise CheckpointError(f"{where} is invalid: it has {len(spec.class_names)} class_names for num_classes = "
                              f"{spec.num_classes}.")
    return spec


def _resolve(kind: str, name: str, info: Any) -> str:
    """The registry reference for ``kind`` ``name`` as recorded: ``"dist:name"`` or the bare name."""
    dist = info.get("distribution") if isinstance(info, dict) else None
    version = info.get("version") if isinstance(info, dict) else None
    if dist in (None, "", "?"):
        return name  # nothing recorded: the bare name (unique, or a clear ambiguity error)
    if not valid_distribution(dist):
        raise CheckpointError(
            f"config.json records the provider of the {kind} {name!r} as {shown(dist)}, which is not a valid "
            "distribution name; the checkpoint is damaged or hostile, so it is not loaded."
        )
    found = registry.providers(kind, name)
    match = [e for e in found if registry.canonical(e.distribution) == registry.canonical(dist)]
    if match:
        return match[0].qualified
    if found:
        others = ", ".join(f"{e.distribution} {e.version}" for e in found)
        ver = f" {version}" if isinstance(version, str) and version else ""
        raise CheckpointError(
            f"this checkpoint's {kind} {name!r} was provided by {dist}{shown(ver, 30)[1:-1]}, but the installed "
            f"{kind} of that name comes from {others}. Different code under the same name cannot be trusted to "
            f"read these weights, so the checkpoint is not loaded. "
            + missing_provider_text(kind, name, dist, version)
        )
    raise CheckpointError(f"this checkpoint needs the {kind} {name!r}. " + missing_provider_text(kind, name, dist, version))


def resolve_components(spec: CheckpointSpec) -> dict[str, dict[str, Any] | None]:
    """``{"encoder": {...}, "pooling": {...}, "augment": {...} | None}`` tables with provider-qualified names."""
    out: dict[str, dict[str, Any] | None] = {}
    for kind in ("encoder", "pooling", "augment"):
        table = getattr(spec, kind)
        if table is None:
            out[kind] = None
            continue
        options = dict(table.model_extra or {})
        out[kind] = {**options, "name": _resolve(kind, table.name, spec.components.get(kind))}
    return out


def header(weights: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` from the safetensors header, without reading the tensors."""
    if not weights.exists():
        raise CheckpointError(f"{weights} does not exist; the checkpoint is incomplete.")
    try:
        with safetensors.safe_open(str(weights), framework="pt") as fh:
            return {k: (tuple(fh.get_slice(k).get_shape()), fh.get_slice(k).get_dtype()) for k in fh.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights} is truncated or corrupted ({exc}); re-download or re-save the checkpoint."
        ) from None


def _expected(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), _DTYPE_NAMES.get(v.dtype, str(v.dtype))) for k, v in model.state_dict().items()}


def _tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names of one shared tensor (``save_model`` saves it once); works on the meta device too."""
    groups: dict[int, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(v), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def check_against_header(model: torch.nn.Module, weights: Path) -> None:
    """Every tensor of ``model`` (built on any device, meta included) matches the file's header."""
    have = header(weights)
    expected = _expected(model)
    for group in _tied_groups(model):
        present = [n for n in group if n in have]
        for n in group:
            if n not in have and present:
                have = {**have, n: have[present[0]]}
    missing = sorted(set(expected) - set(have))
    unexpected = sorted(set(have) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match the model built from config.json: missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]}. The checkpoint and the installed components disagree; "
            "install the versions recorded in config.json."
        )
    bad = [f"{k}: checkpoint {have[k][0]} {have[k][1]} vs model {v[0]} {v[1]}"
           for k, v in expected.items() if have[k] != v]
    if bad:
        raise CheckpointError(
            f"{weights} has tensors of the wrong shape or dtype ({'; '.join(bad[:5])}); config.json does not "
            "describe these weights (different options or input size), so nothing was allocated for them."
        )


def build_on_meta(build) -> torch.nn.Module | None:
    """``build()`` under the meta device (no memory); None when a component cannot be built there."""
    try:
        with torch.device("meta"):
            return build()
    except CheckpointError:
        raise
    except (RuntimeError, NotImplementedError, TypeError):  # data-dependent code in a component's __init__
        return None


def check_finite(model: torch.nn.Module, weights: Path) -> None:
    params = {n for n, _ in model.named_parameters()}
    bad_params, bad_buffers = [], []
    for name, t in model.state_dict().items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            (bad_params if name in params else bad_buffers).append(name)
    if bad_params:
        raise CheckpointError(
            f"{weights} holds NaN or infinite weights ({', '.join(bad_params[:5])}"
            f"{' and more' if len(bad_params) > 5 else ''}); a model with them cannot give meaningful predictions. "
            "The file is damaged, or was saved after training diverged: use an earlier checkpoint."
        )
    if bad_buffers:
        warnings.warn(
            f"{weights} has non-finite values in the buffers {', '.join(bad_buffers[:5])}; predictions may be NaN.",
            CheckpointWarning, stacklevel=3,
        )

