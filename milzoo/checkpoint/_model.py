"""Saving a model as a checkpoint folder and loading it back.

:func:`save_model` writes ``model.safetensors`` and ``config.json`` (see :mod:`milzoo.checkpoint._format`)
atomically.  :func:`load_model` reads a folder in one direction: read and verify ``config.json``
(:mod:`milzoo.checkpoint._verify`), rebuild the components it records from the registry (on the meta device
first, to compare with the weights' header), then read the weights into the model and check them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from milzoo._atomic import atomic_write_bytes, atomic_write_json
from milzoo._untrusted import shown
from milzoo.checkpoint._format import CONFIG, WEIGHTS, model_config, saved_state, tensors_bytes, with_tied_names
from milzoo.checkpoint._verify import (
    CheckpointSpec, build_on_meta, check_against_header, check_finite, read_config, read_weights,
    resolve_components, validate_spec, validation_problems,
)
from milzoo.errors import CheckpointError, UnknownComponentError
from milzoo.model.build import build_components
from milzoo.model.decision import apply_recorded_threshold
from milzoo.model.mil import MILModel


def save_model(model: MILModel, directory: str | Path, extra_config: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model, extra_config)
    atomic_write_bytes(directory / WEIGHTS, tensors_bytes(saved_state(model), {"format": "pt"}))
    atomic_write_json(directory / CONFIG, cfg)
    return directory


def _build(spec: CheckpointSpec, tables: dict[str, dict[str, Any] | None]) -> MILModel:
    model = build_components(
        encoder=tables["encoder"], pooling=tables["pooling"], augment=tables["augment"], task=tables["task"],
        in_shape=tuple(spec.in_shape), num_classes=spec.num_classes, class_names=spec.class_names,
        standardize=spec.standardize, channels_last=spec.channels_last,
    )
    return model.double() if spec.dtype == "float64" else model


def build_model_from_config(cfg: dict[str, Any], weights: str | Path | None = None) -> MILModel:
    """Rebuild an (untrained) model from a checkpoint's config.json.

    The config is checked first (types, ranges, recorded providers; see :mod:`milzoo.checkpoint._verify`).
    With ``weights``, the model is built on the meta device and compared with that safetensors file's header
    before anything is allocated.
    """
    spec = validate_spec(cfg)
    tables = resolve_components(spec)
    try:
        if weights is not None:
            meta = build_on_meta(lambda: _build(spec, tables))
            if meta is not None:
                check_against_header(meta, Path(weights))
        return _build(spec, tables)
    except UnknownComponentError as exc:
        raise CheckpointError(str(exc)) from None
    except ValidationError as exc:
        raise CheckpointError(
            "the checkpoint's component options do not validate against the installed components (their options "
            f"changed incompatibly): {validation_problems(exc)}. Install the versions recorded in config.json "
            f"({shown(cfg.get('distributions', {}), 200)})."
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json is incomplete or invalid ({shown(exc, 300)}).") from None


def load_state_into(model: MILModel, weights: str | Path) -> None:
    """Strictly load a safetensors file into ``model`` (clear errors on any mismatch, before reading tensors)."""
    weights = Path(weights)
    check_against_header(model, weights)
    model.load_state_dict(with_tied_names(model, read_weights(weights)), strict=True)
    check_finite(model, weights)


def load_model(directory: str | Path) -> MILModel:
    """Rebuild a model from a checkpoint directory and load its weights (eval mode)."""
    cfg = read_config(directory)
    weights = Path(directory) / WEIGHTS
    model = build_model_from_config(cfg, weights)
    load_state_into(model, weights)
    model.eval()
    # the binary threshold chosen on validation, when the run chose one (milzoo.model.decision: one rule)
    return apply_recorded_threshold(model, cfg)
