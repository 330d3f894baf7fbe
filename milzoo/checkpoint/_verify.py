"""Verifying a checkpoint folder that may come from anyone (a Hub download, a colleague's folder).

A checkpoint is ``config.json`` (data) + ``model.safetensors`` (tensors).  Nothing in it is executed and
nothing is unpickled.  Before any memory is allocated, :func:`milzoo.checkpoint.load_model` has this module
check that:

1. ``config.json`` is a JSON object of bounded size and depth (:func:`read_config`) whose fields have the right
   types and ranges (:func:`validate_spec`, :class:`CheckpointSpec`);
2. every component resolves to the distribution that ``config.json`` records as its provider
   (:func:`resolve_components`), never to another distribution that happens to register the same name;
3. the model, built on the meta device (:func:`build_on_meta`, no memory), matches the safetensors header in
   every tensor's name, shape and dtype (:func:`check_against_header`).

Only then is the model built for real and its weights read (:func:`read_weights`); weights that are not
finite are refused (parameters) or warned about (buffers) by :func:`check_finite`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import safetensors
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from milzoo._untrusted import read_json, shown, valid_distribution
from milzoo.checkpoint._format import COMPONENT_KINDS, CONFIG, FORMAT, FORMAT_VERSION, with_tied_names
from milzoo.errors import CheckpointError, CheckpointWarning
from milzoo.registry import NAME_PATTERN, canonical, missing_provider_text, providers

#: the largest integer any shape or class count in a config may hold
MAX_DIM = 2**31 - 1

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}

_T = TypeVar("_T")


class _ComponentSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=NAME_PATTERN.pattern, max_length=100)


class CheckpointSpec(BaseModel):
    """The fields of config.json that rebuilding a model reads, with their types and ranges."""

    model_config = ConfigDict(extra="allow")
    format: str
    format_version: int = Field(ge=1)
    encoder: _ComponentSpec
    pooling: _ComponentSpec
    augment: _ComponentSpec | None = None
    #: absent for classification (every checkpoint written before tasks)
    task: _ComponentSpec | None = None
    in_shape: list[int] = Field(min_length=1, max_length=4)
    #: outputs of the bag head: the number of classes, or a task's out_dim (1 for a regression target)
    num_classes: int = Field(ge=1, le=MAX_DIM)
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


# --------------------------------------------------------------------------- config.json


def _require_object(cfg: Any, where: str) -> dict[str, Any]:
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where} holds a JSON {type(cfg).__name__}, not an object; it is not a milzoo "
                              "checkpoint config.")
    return cfg


def read_config(directory: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint or Hub folder: a JSON object of bounded size and depth."""
    path = Path(directory) / CONFIG
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; is {directory} a milzoo checkpoint or run directory?")
    return _require_object(read_json(path, "checkpoint config", CheckpointError), str(path))


def validation_problems(exc: ValidationError, limit: int = 6) -> str:
    """The first ``limit`` problems of a validation error, with the offending values quoted and cut short."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']} (got {shown(e.get('input'), 40)})"
        for e in exc.errors(include_url=False)[:limit]
    )


def validate_spec(cfg: Any, where: str = "config.json") -> CheckpointSpec:
    """The fields of a model config that rebuilding reads, checked: format, version, types and ranges."""
    cfg = _require_object(cfg, where)
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a milzoo model config (format={shown(cfg.get('format'))}).")
    version = cfg.get("format_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"this checkpoint uses format version {shown(version, 30)}, newer than this milzoo supports "
            f"({FORMAT_VERSION}); upgrade milzoo (`pip install -U milzoo`)."
        )
    try:
        spec = CheckpointSpec.model_validate(cfg)
    except ValidationError as exc:
        raise CheckpointError(f"{where} is invalid: {validation_problems(exc)}. The checkpoint is damaged or was "
                              "not written by milzoo.") from None
    # classification: one name per output; another task names its labels (survival's "risk" over its time bins)
    if spec.task is None and spec.class_names is not None and len(spec.class_names) != spec.num_classes:
        raise CheckpointError(f"{where} is invalid: it has {len(spec.class_names)} class_names for num_classes = "
                              f"{spec.num_classes}.")
    return spec


def _recorded_provider(kind: str, name: str, info: Any) -> str:
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
    found = providers(kind, name)
    match = [e for e in found if canonical(e.distribution) == canonical(dist)]
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
    for kind in COMPONENT_KINDS:
        table = getattr(spec, kind)
        if table is None:
            out[kind] = None
            continue
        options = dict(table.model_extra or {})
        out[kind] = {**options, "name": _recorded_provider(kind, table.name, spec.components.get(kind))}
    return out


# --------------------------------------------------------------------------- model.safetensors


def _read_safetensors(weights: Path, read: Callable[[Any], _T]) -> _T:
    """``read(handle)`` of an open safetensors file; a missing, truncated or corrupted file is a clear error."""
    if not weights.exists():
        raise CheckpointError(f"{weights} does not exist; the checkpoint is incomplete.")
    try:
        with safetensors.safe_open(str(weights), framework="pt", device="cpu") as fh:
            return read(fh)
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights} is truncated or corrupted ({exc}); re-download or re-save the checkpoint."
        ) from None


def header(weights: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` from the safetensors header, without reading the tensors."""
    return _read_safetensors(
        Path(weights),
        lambda fh: {k: (tuple(fh.get_slice(k).get_shape()), fh.get_slice(k).get_dtype()) for k in fh.keys()},
    )


def read_weights(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU (check the file with :func:`check_against_header` first)."""
    return _read_safetensors(Path(weights), lambda fh: {k: fh.get_tensor(k) for k in fh.keys()})


def _state_entries(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), _DTYPE_NAMES.get(v.dtype, str(v.dtype))) for k, v in model.state_dict().items()}


def check_against_header(model: torch.nn.Module, weights: Path) -> None:
    """Every tensor of ``model`` (built on any device, meta included) matches the file's header."""
    have = with_tied_names(model, header(weights))
    expected = _state_entries(model)
    missing = sorted(set(expected) - set(have))
    unexpected = sorted(set(have) - set(expected))  # names from the file: quoted and cut short
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match the model built from config.json: missing keys {missing[:8]}, "
            f"unexpected keys {shown(unexpected[:8], 400)}. The checkpoint and the installed components disagree; "
            "install the versions recorded in config.json."
        )
    bad = [f"{k}: checkpoint {shown(have[k][0], 80)} {have[k][1]} vs model {v[0]} {v[1]}"
           for k, v in expected.items() if have[k] != v]
    if bad:
        raise CheckpointError(
            f"{weights} has tensors of the wrong shape or dtype ({'; '.join(bad[:5])}); config.json does not "
            "describe these weights (different options or input size), so nothing was allocated for them."
        )


def build_on_meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
    """``build()`` under the meta device (no memory); None when a component cannot be built there."""
    try:
        with torch.device("meta"):
            return build()
    except CheckpointError:
        raise
    except (RuntimeError, NotImplementedError, TypeError):  # data-dependent code in a component's __init__
        return None


def check_finite(model: torch.nn.Module, weights: Path) -> None:
    """Refuse NaN/inf parameters of a loaded model; warn (:class:`CheckpointWarning`) about NaN/inf buffers."""
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
