"""Checkpoints: ``model.safetensors`` + ``config.json``, written atomically, never pickle.

Public: writing and loading a model (``save_model``, ``load_model``), the file format's names, the checks that
make a folder from anyone safe to load (``validate_spec``, ``check_against_header``, ``check_finite``) and the
training state of an interrupted fold (``save_training_state``, ``load_training_state``).
"""

from milzoo._lazy import attach

_EXPORTS = {
    # atomic writes (milzoo._atomic)
    "atomic_write_bytes": "milzoo._atomic", "atomic_write_text": "milzoo._atomic",
    "atomic_write_json": "milzoo._atomic",
    # _model
    "FORMAT": "_model", "FORMAT_VERSION": "_model", "WEIGHTS": "_model", "CONFIG": "_model", "STATE": "_model",
    "model_config": "_model", "save_model": "_model", "build_model_from_config": "_model", "read_config": "_model",
    "load_state_into": "_model", "load_model": "_model", "save_training_state": "_model",
    "load_training_state": "_model", "optimizer_state_from_json": "_model",
    # _verify
    "MAX_DIM": "_verify", "CheckpointWarning": "_verify", "CheckpointSpec": "_verify", "validate_spec": "_verify",
    "resolve_components": "_verify", "header": "_verify", "check_against_header": "_verify",
    "build_on_meta": "_verify", "check_finite": "_verify",
    # predictions
    "write_predictions": "predictions", "read_predictions": "predictions",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
