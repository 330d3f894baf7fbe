"""Verifying a checkpoint folder that may come from anyone (a Hub download, a colleague's folder).

A checkpoint is ``config.json`` (data) + ``model.safetensors`` (tensors).  Nothing in it is executed and
nothing is unpickled.  Before any memory is allocated, :func:`milzoo.checkpoint.load_model` has this module
check that:

1. ``config.json`` is a JSON object of bounded size and depth (:func:`read_config`) whose fields have exactly
   the right types and ranges (:func:`validate_spec`, :class:`CheckpointSpec`: no ``"2"`` for ``2``, at most
   :data:`MAX_CLASSES` outputs, an instance of at most :data:`MAX_DIM` values); a key that looks like a
   misspelt field is refused, any other key it does not read is named in a :class:`CheckpointWarning`;
2. every component resolves to the distribution that ``config.json`` records as its provider
   (:func:`resolve_components`), never to another distribution that happens to register the same name, and
   its options validate against that component (:func:`component_tables`); options that would fetch weights
   from elsewhere (:data:`OFFLINE_OPTIONS`) are switched off, since the weights come from the safetensors file;
3. the weights file holds at most ``max_bytes`` (:data:`~milzoo.model.sizing.MAX_LOAD_BYTES` unless the caller
   allows more) and :data:`~milzoo.model.sizing.MAX_TENSORS` tensors (:func:`check_weights_size`);
4. the model, built on the meta device under a :class:`~milzoo.model.sizing.SizeGuard` (:func:`build_on_meta`:
   no memory, every size computed with Python integers before torch sees it, at most ``max_bytes``), matches
   the safetensors header in every tensor's name, shape and dtype (:func:`check_against_header`).  A model
   whose components cannot be built on the meta device is refused, never built for real unchecked.

Only then is the model built for real and its weights read (:func:`read_weights`); weights that are not
finite are refused (parameters) or warned about (buffers) by :func:`check_finite`.
"""

from __future__ import annotations

import difflib
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import safetensors
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from milzoo._untrusted import pip_install, read_json, shown, valid_distribution, valid_version
from milzoo.checkpoint._format import (
    COMPONENT_KINDS, CONFIG, FORMAT, FORMAT_VERSION, METADATA_KEYS, with_tied_names,
)
from milzoo.errors import CheckpointError, CheckpointWarning, UserError
from milzoo.model.sizing import MAX_LOAD_BYTES, MAX_TENSORS, bytes_text, first_line, guarded_build, is_size_overflow
from milzoo.registry import NAME_PATTERN, canonical, get_component, installed_version, missing_provider_text, \
    providers

log = logging.getLogger(__name__)

#: the largest integer any size in a config may hold, and the most values one instance may have
MAX_DIM = 2**31 - 1
#: the most outputs (classes, or a task's out_dim) a checkpoint's head may have: each is named in memory
MAX_CLASSES = 100_000
#: component options that would load weights from elsewhere (a download, a local file): a checkpoint's weights
#: come from its safetensors file, so these are set to the values here whenever a checkpoint is rebuilt
OFFLINE_OPTIONS: dict[str, Any] = {"pretrained": False, "weights_path": None}

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}

_T = TypeVar("_T")


class _ComponentSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(pattern=NAME_PATTERN.pattern, max_length=100)


class CheckpointSpec(BaseModel):
    """The fields of config.json that rebuilding a model reads, with their exact types and ranges (strict: the
    string ``"2"`` or the float ``2.0`` is not the integer 2 here)."""

    model_config = ConfigDict(extra="allow", strict=True)
    format: str
    format_version: int = Field(ge=1)
    encoder: _ComponentSpec
    pooling: _ComponentSpec
    augment: _ComponentSpec | None = None
    #: absent for classification (every checkpoint written before tasks)
    task: _ComponentSpec | None = None
    in_shape: list[int] = Field(min_length=1, max_length=4)
    #: outputs of the bag head: the number of classes, or a task's out_dim (1 for a regression target)
    num_classes: int = Field(ge=1, le=MAX_CLASSES)
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
        if math.prod(v) > MAX_DIM:  # Python integers: the product cannot overflow
            raise ValueError(f"one instance of this shape has {math.prod(v):,} values, more than {MAX_DIM:,}")
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
    _check_unknown_keys(cfg, where)
    return spec


def _check_unknown_keys(cfg: dict[str, Any], where: str) -> None:
    """Refuse a key that looks like a misspelt field (it would be ignored, changing the model silently); name
    every other key this milzoo does not read in a :class:`CheckpointWarning`."""
    fields = set(CheckpointSpec.model_fields)
    unknown = [k for k in cfg if k not in fields and k not in METADATA_KEYS]
    if not unknown:
        return
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.8)
        if close:
            raise CheckpointError(
                f"{where} has the key {shown(key)}, which milzoo does not read; did you mean {close[0]!r}? Rebuilding "
                f"would ignore it and use the default of {close[0]!r}, which may not be the model these weights "
                "belong to, so the checkpoint is not loaded. Fix the key's name in config.json."
            )
    warnings.warn(
        f"{where} has keys this milzoo does not read: {shown(sorted(unknown)[:8], 200)}. They do not change the "
        "model that is loaded (data added with save_model(extra_config=...), a newer milzoo, or an edited file).",
        CheckpointWarning, stacklevel=4,
    )


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
    if found:  # the name is installed, from another distribution
        others = ", ".join(f"{e.distribution} {e.version}" for e in found)
        ver = f" {version}" if isinstance(version, str) and version else ""
        head = (f"config.json says its {kind} {name!r} was provided by {dist}{shown(ver, 30)[1:-1]} (a name read "
                f"from the file), but the installed {kind} of that name comes from {others}. Different code under "
                "the same name cannot be trusted to read these weights, so the checkpoint is not loaded. ")
        if installed_version(dist) is not None:  # installed, but its plugin failed or is disabled: say so
            raise CheckpointError(head + missing_provider_text(kind, name, dist, version))
        raise CheckpointError(  # not installed: no install command (a look-alike name is not a fix)
            head + "milzoo suggests nothing to install here: a distribution named only by a file may imitate the "
            f"one you have. If the checkpoint was written with {found[0].distribution}, correct "
            f"components.{kind}.distribution in config.json; otherwise get the distribution that wrote it from a "
            "source you trust."
        )
    raise CheckpointError(f"this checkpoint needs the {kind} {name!r}. "
                          + missing_provider_text(kind, name, dist, version))


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


def _option_problems(kind: str, exc: ValidationError, limit: int = 6) -> str:
    return "; ".join(
        f"{kind}.{'.'.join(str(p) for p in e['loc'])}: {e['msg'].rstrip('.')} (got {shown(e.get('input'), 40)})"
        for e in exc.errors(include_url=False)[:limit]
    )


def _options_error(kind: str, qualified: str, exc: ValidationError, info: Any) -> CheckpointError:
    """Invalid options of a component: blamed on the file unless the installed provider is another version."""
    name = qualified.rpartition(":")[2]
    problems = _option_problems(kind, exc)
    dist = qualified.rpartition(":")[0] or None
    recorded = info.get("version") if isinstance(info, dict) and isinstance(info.get("version"), str) else None
    have = installed_version(dist) if dist else None
    if dist and recorded and have and recorded != have:
        how = f"`{pip_install(dist, recorded)}`" if valid_version(recorded) else "that version"
        return CheckpointError(
            f"config.json gives the {kind} {name!r} options that the installed {dist} {have} does not accept: "
            f"{problems}. config.json records that it was written with {dist} {shown(recorded, 30)[1:-1]}: the "
            f"options may have changed incompatibly between the two versions. Install the recorded one ({how}; the "
            "version comes from the file) or re-save the checkpoint with this one."
        )
    same = f"The installed {dist} {have} is the version config.json records, so the" if recorded and have else "The"
    return CheckpointError(
        f"config.json gives the {kind} {name!r} options it does not accept: {problems}. {same} file was damaged or "
        "edited by hand; restore the original config.json or re-save the checkpoint."
    )


def component_tables(spec: CheckpointSpec,
                     tables: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any] | None]:
    """The resolved ``tables`` with each component's options validated (a clear error naming the component and
    each bad option) and every option of :data:`OFFLINE_OPTIONS` set to its offline value."""
    out: dict[str, dict[str, Any] | None] = {}
    for kind, table in tables.items():
        if table is None:
            out[kind] = None
            continue
        options = {k: v for k, v in table.items() if k != "name"}
        cls = get_component(kind, table["name"])
        fields = getattr(cls.Config, "model_fields", {})
        for key, value in OFFLINE_OPTIONS.items():
            if key in fields and options.get(key, value) != value:
                log.info("%s %s: %s = %r ignored: a checkpoint's weights come from its safetensors file",
                         kind, table["name"], key, options[key])
                options[key] = value
        try:
            cls.Config.model_validate(options)
        except ValidationError as exc:
            raise _options_error(kind, table["name"], exc, spec.components.get(kind)) from None
        out[kind] = {**options, "name": table["name"]}
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


def check_weights_size(weights: Path, max_bytes: int = MAX_LOAD_BYTES) -> tuple[int, int]:
    """``(tensors, bytes)`` of a safetensors file, refused when it holds more than ``max_bytes`` or
    :data:`~milzoo.model.sizing.MAX_TENSORS` tensors.  Nothing is read but its size and header (safetensors
    checks that the header's offsets cover the file exactly)."""
    weights = Path(weights)
    try:
        size = weights.stat().st_size
    except OSError:
        raise CheckpointError(f"{weights} does not exist; the checkpoint is incomplete.") from None
    if size > max_bytes:
        raise CheckpointError(
            f"{weights} is {bytes_text(size)}, more than the {bytes_text(max_bytes)} of weights milzoo loads from a "
            "model folder unless told otherwise; nothing was read. If you trust this folder and the model really "
            "is that large, load it with a larger limit (milzoo.load_model(path, max_bytes=...), "
            "load_pretrained(..., max_bytes=...))."
        )
    count = _read_safetensors(weights, lambda fh: len(fh.keys()))
    if count > MAX_TENSORS:
        raise CheckpointError(f"{weights} holds {count:,} tensors, more than the {MAX_TENSORS:,} any milzoo model has; "
                              "it is damaged or hostile, so it is not read.")
    return count, size


def refusal(max_bytes: int, weights: tuple[Path, int, int] | None = None,
            where: str = "config.json") -> Callable[[str], CheckpointError]:
    """What a :class:`~milzoo.model.sizing.SizeGuard` raises when a model from a folder asks for ``what``."""
    held = ""
    if weights is not None:
        path, count, size = weights
        held = (f" {path.name} holds {count:,} tensors of {bytes_text(size)}, so {where} does not describe these "
                "weights.")

    def refuse(what: str) -> CheckpointError:
        return CheckpointError(
            f"{where} asks for a model with {what}, beyond what milzoo builds from a model folder unless told "
            f"otherwise ({bytes_text(max_bytes)} of tensors, and about four tensors per tensor of the weights file); "
            f"nothing was allocated.{held} The file is damaged or hostile; if you trust it and the model really is "
            "that large, load it with a larger limit (milzoo.load_model(path, max_bytes=...))."
        )

    return refuse


def build_on_meta(build: Callable[[], torch.nn.Module], max_bytes: int = MAX_LOAD_BYTES,
                  weights: tuple[Path, int, int] | None = None, where: str = "config.json") -> torch.nn.Module:
    """``build()`` on the meta device under a :class:`~milzoo.model.sizing.SizeGuard` (no memory).

    Every tensor is sized with Python integers before torch sees it; the model may create at most ``max_bytes``
    of tensors, and at most about four times as many tensors as ``weights`` (``(path, tensors, bytes)`` of its
    safetensors file) holds.  A model beyond that, or one that cannot be built on the meta device, raises
    :class:`CheckpointError`: it is never built for real unchecked.
    """
    refuse = refusal(max_bytes, weights, where)
    # a build makes about one tensor per tensor the file holds (a few temporaries more)
    max_tensors = MAX_TENSORS if weights is None else min(MAX_TENSORS, 4 * weights[1] + 1024)
    try:
        return guarded_build(build, max_bytes, refuse, max_tensors=max_tensors)
    except (UserError, ValidationError):  # a component's own clear error; the caller words a ValidationError
        raise
    except Exception as exc:  # noqa: BLE001 - whatever else stops the build, the model is not built for real
        if is_size_overflow(exc):
            raise refuse(f"a size too large to represent ({first_line(exc)})") from None
        raise CheckpointError(
            f"the model that {where} describes cannot be built on PyTorch's meta device, where milzoo sizes a model "
            f"from a folder before allocating anything ({type(exc).__name__}: {first_line(exc)}). Either {where} "
            "gives its components values they cannot use (the file is damaged or was edited), or a component "
            "allocates memory in its constructor in a way the meta device cannot follow; milzoo does not build a "
            "model from a folder without sizing it first. The component's author can make its constructor work "
            "under `with torch.device('meta')`."
        ) from None


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
