"""Checkpoints: ``model.safetensors`` + ``config.json``, written atomically, never pickle.

``config.json`` holds everything needed to rebuild the model from the registry:
component names and options, input shape, label names, and the milzoo and
plugin distributions (with versions) that provided each component.  Training
state for ``--resume`` (model, optimizer, RNG state, loss buffers, history) is
kept in one ``state.safetensors`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from pydantic import ValidationError

from milzoo.checkpoint import _verify as loading
from milzoo.errors import CheckpointError, UnknownComponentError
from milzoo.model.mil import MILModel
from milzoo._untrusted import read_json
from milzoo._atomic import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: F401 (public here too)
from milzoo._version import milzoo_version

FORMAT = "milzoo-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "state.safetensors"


def _tensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    return safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


# --------------------------------------------------------------------------- model


def _unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without duplicate storage (shared/tied tensors are saved once)."""
    sd = model.state_dict()
    seen: dict[tuple, str] = {}
    out = {}
    for k, v in sd.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype) if v.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = k
        out[k] = v
    return out


def model_config(model: MILModel, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = model.spec()
    components = {}
    plugins: dict[str, str] = {}
    for kind in ("encoder", "pooling", "augment"):
        comp = getattr(model, kind)
        if comp is None:
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


def save_model(model: MILModel, directory: str | Path, extra_config: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model, extra_config)
    atomic_write_bytes(directory / WEIGHTS, _tensors_bytes(_unique_state(model), {"format": "pt"}))
    atomic_write_json(directory / CONFIG, cfg)
    return directory


def build_model_from_config(cfg: dict[str, Any], weights: str | Path | None = None) -> MILModel:
    """Rebuild an (untrained) model from a checkpoint's config.json.

    The config is checked first (types, ranges, recorded providers; see
    :mod:`milzoo.loading`).  With ``weights``, the model is built on the meta
    device and compared with that safetensors file's header before anything
    is allocated.
    """
    from milzoo.model.build import build_components

    spec = loading.validate_spec(cfg)
    tables = loading.resolve_components(spec)

    def build() -> MILModel:
        model = build_components(
            encoder=tables["encoder"], pooling=tables["pooling"], augment=tables["augment"],
            in_shape=tuple(spec.in_shape), num_classes=spec.num_classes, class_names=spec.class_names,
            standardize=spec.standardize, channels_last=spec.channels_last,
        )
        return model.double() if spec.dtype == "float64" else model

    try:
        if weights is not None:
            meta = loading.build_on_meta(build)
            if meta is not None:
                loading.check_against_header(meta, Path(weights))
        return build()
    except UnknownComponentError as exc:
        raise CheckpointError(str(exc)) from None
    except ValidationError as exc:
        raise CheckpointError(
            "the checkpoint's component options do not validate against the installed components (their options "
            f"changed incompatibly): {exc.errors(include_url=False)}. Install the versions recorded in config.json "
            f"({loading.shown(cfg.get('distributions', {}), 200)})."
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json is incomplete or invalid ({type(exc).__name__}: {exc}).") from None


def read_config(directory: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint or Hub folder: a JSON object of bounded size and depth."""
    path = Path(directory) / CONFIG
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; is {directory} a milzoo checkpoint or run directory?")
    cfg = read_json(path, "checkpoint config", CheckpointError)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} holds a JSON {type(cfg).__name__}, not an object; it is not a milzoo "
                              "checkpoint config.")
    return cfg


def load_state_into(model: torch.nn.Module, weights: str | Path) -> None:
    """Strictly load a safetensors file into ``model`` (clear errors on any mismatch, before reading tensors)."""
    weights = Path(weights)
    loading.check_against_header(model, weights)
    try:
        state = safetensors.torch.load_file(str(weights), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights} is truncated or corrupted ({exc}); re-download or re-save the checkpoint."
        ) from None
    for group in loading._tied_groups(model):  # tied tensors are saved once: fill the aliases from their twin
        present = [n for n in group if n in state]
        for n in group:
            if n not in state and present:
                state[n] = state[present[0]]
    model.load_state_dict(state, strict=True)
    loading.check_finite(model, weights)


def load_model(directory: str | Path) -> MILModel:
    """Rebuild a model from a checkpoint directory and load its weights (eval mode)."""
    cfg = read_config(directory)
    weights = Path(directory) / WEIGHTS
    model = build_model_from_config(cfg, weights)
    load_state_into(model, weights)
    model.eval()
    return model


# --------------------------------------------------------------------------- training state


def _flatten(prefix: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors inside nested dicts/lists by references stored in ``tensors``."""
    if torch.is_tensor(obj):
        key = f"{prefix}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {str(k): _flatten(f"{prefix}.{k}", v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Save a nested dict of tensors and JSON values as ONE safetensors file.

    The JSON part travels in the safetensors header metadata, so the file is
    written atomically as a whole: a crash leaves either the old or the new
    state, never a mix.  No pickle.
    """
    tensors: dict[str, torch.Tensor] = {}
    meta = _flatten("s", state, tensors)
    atomic_write_bytes(path, _tensors_bytes(tensors, {"milzoo_state": json.dumps(meta)}))


def load_training_state(path: str | Path) -> dict[str, Any] | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata()["milzoo_state"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"the training state {path} is corrupted ({type(exc).__name__}: {exc}); delete it to restart that fold."
        ) from None
    return _unflatten(meta, tensors)


def optimizer_state_from_json(sd: dict[str, Any]) -> dict[str, Any]:
    """JSON turns optimizer state keys into strings; torch wants ints."""
    return {
        "state": {int(k): v for k, v in sd["state"].items()},
        "param_groups": sd["param_groups"],
    }
