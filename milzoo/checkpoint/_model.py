"""Saving a model as a checkpoint folder and loading it back.

:func:`save_model` writes ``model.safetensors`` and ``config.json`` (see :mod:`milzoo.checkpoint._format`)
atomically.  :func:`load_model` reads a folder in one direction: read and verify ``config.json``
(:mod:`milzoo.checkpoint._verify`), size the weights file, rebuild the components it records from the registry
(on the meta device first, every size computed before torch sees it, to compare with the weights' header), then
read the weights into the model and check them.  ``max_bytes`` (default
:data:`~milzoo.model.sizing.MAX_LOAD_BYTES`) bounds the tensors of the model and of the weights file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from milzoo._atomic import atomic_write_bytes, atomic_write_json
from milzoo._untrusted import shown
from milzoo.checkpoint._format import CONFIG, WEIGHTS, model_config, saved_state, tensors_bytes, with_tied_names
from milzoo.checkpoint._verify import (
    CheckpointSpec, build_on_meta, check_against_header, check_finite, check_weights_size, component_tables,
    read_config, read_weights, refusal, resolve_components, validate_spec, validation_problems,
)
from milzoo.errors import CheckpointError, UnknownComponentError
from milzoo.model.build import build_components
from milzoo.model.decision import apply_recorded_threshold
from milzoo.model.mil import MILModel
from milzoo.model.sizing import MAX_LOAD_BYTES, first_line, guarded_build


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


def build_model_from_config(cfg: dict[str, Any], weights: str | Path | None = None,
                            max_bytes: int | None = None) -> MILModel:
    """Rebuild an (untrained) model from a checkpoint's config.json.

    The config is checked first (types, ranges, recorded providers, component options; see
    :mod:`milzoo.checkpoint._verify`), then the model is sized on the meta device: at most ``max_bytes`` of
    tensors (default :data:`~milzoo.model.sizing.MAX_LOAD_BYTES`).  With ``weights``, that safetensors file is
    sized first and the meta model compared with its header, all before anything is allocated.
    """
    limit = MAX_LOAD_BYTES if max_bytes is None else int(max_bytes)
    spec = validate_spec(cfg)
    try:
        tables = component_tables(spec, resolve_components(spec))
        held = None
        if weights is not None:
            weights = Path(weights)
            held = (weights, *check_weights_size(weights, limit))
        meta = build_on_meta(lambda: _build(spec, tables), limit, held)
        if weights is not None:
            check_against_header(meta, weights)
        # built for real under the same guard: the same code with the same sizes, checked again as it allocates
        return guarded_build(lambda: _build(spec, tables), limit, refusal(limit, held), meta=False)
    except UnknownComponentError as exc:
        raise CheckpointError(str(exc)) from None
    except ValidationError as exc:  # options of a part a component builds itself (its own options were checked)
        raise CheckpointError(
            f"a component refused the options config.json gives it while the model was built: "
            f"{validation_problems(exc)}. The file is damaged or edited, or the installed components are not those "
            f"that wrote it ({shown(cfg.get('distributions', {}), 200)})."
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json is incomplete or invalid ({type(exc).__name__}: {first_line(exc)}).") \
            from None


def load_state_into(model: MILModel, weights: str | Path) -> None:
    """Strictly load a safetensors file into ``model`` (clear errors on any mismatch, before reading tensors)."""
    weights = Path(weights)
    check_against_header(model, weights)
    model.load_state_dict(with_tied_names(model, read_weights(weights)), strict=True)
    check_finite(model, weights)


def load_model(directory: str | Path, max_bytes: int | None = None) -> MILModel:
    """Rebuild a model from a checkpoint directory and load its weights (eval mode).

    ``max_bytes`` raises the limit on the model's tensors (default :data:`~milzoo.model.sizing.MAX_LOAD_BYTES`,
    4 GiB) for a model you trust that is really that large.
    """
    cfg = read_config(directory)
    weights = Path(directory) / WEIGHTS
    model = build_model_from_config(cfg, weights, max_bytes)
    load_state_into(model, weights)
    model.eval()
    # the binary threshold chosen on validation, when the run chose one (milzoo.model.decision: one rule)
    return apply_recorded_threshold(model, cfg)
