"""Checkpoints: ``model.safetensors`` + ``config.json``, written atomically, never pickle.

Public: what a checkpoint is (``_format``: file names, format marker, ``model_config``), writing and loading a
model (``_model``: ``save_model``, ``load_model``), the checks that make a folder from anyone safe to load
(``_verify``: ``read_config``, ``validate_spec``, ``component_tables``, ``check_weights_size``, ``build_on_meta``,
``check_against_header``, ``check_finite``), the training state of an interrupted fold (``state``) and a folder's
predictions CSV (``predictions``).
"""

from milzoo._lazy import attach

_EXPORTS = {
    # atomic writes (milzoo._atomic)
    "atomic_write_bytes": "milzoo._atomic", "atomic_write_text": "milzoo._atomic",
    "atomic_write_json": "milzoo._atomic",
    # _format: what a checkpoint is
    "FORMAT": "_format", "FORMAT_VERSION": "_format", "WEIGHTS": "_format", "CONFIG": "_format", "STATE": "_format",
    "COMPONENT_KINDS": "_format", "METADATA_KEYS": "_format", "model_config": "_format",
    # _model: saving and loading a model
    "save_model": "_model", "build_model_from_config": "_model", "load_state_into": "_model", "load_model": "_model",
    # _verify: checking a folder from anyone
    "MAX_DIM": "_verify", "MAX_CLASSES": "_verify", "OFFLINE_OPTIONS": "_verify", "CheckpointWarning": "_verify",
    "CheckpointSpec": "_verify", "read_config": "_verify", "validate_spec": "_verify",
    "resolve_components": "_verify", "component_tables": "_verify", "header": "_verify", "read_weights": "_verify",
    "check_weights_size": "_verify", "check_against_header": "_verify", "build_on_meta": "_verify",
    "refusal": "_verify", "check_finite": "_verify",
    # sizing (milzoo.model.sizing): the limit on what is loaded from a folder
    "MAX_LOAD_BYTES": "milzoo.model.sizing",
    # state: the training state of an interrupted fold
    "save_training_state": "state", "load_training_state": "state", "optimizer_state_from_json": "state",
    # predictions
    "write_predictions": "predictions", "read_predictions": "predictions",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
