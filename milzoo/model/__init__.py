"""The model: ``MILModel`` (standardise -> augment -> encoder -> pooling), built from a recipe, a checkpoint or
``create_model``'s arguments and shared with ``save_pretrained``/``from_pretrained``/``push_to_hub``
(``sharing``), fold ensembles, the one decision rule from probabilities to a class, and sizing before anything
is allocated."""

from milzoo._lazy import attach

_EXPORTS = {
    # build
    "build_components": "build", "build_model": "build", "build_losses": "build", "build_dataset": "milzoo.datasets.protocols",
    "create_model": "build",
    # decision (one rule from probabilities to a class, and its words)
    "Decision": "decision", "decide": "decision", "decide_output": "decision", "predict_classes": "decision",
    "model_decisions": "decision", "rule_text": "decision", "apply_recorded_threshold": "decision",
    "recorded_threshold": "decision", "summary_rule_text": "decision", "summary_has_classes": "decision",
    # ensemble
    "fold_predictions": "ensemble", "majority_vote": "ensemble", "ensemble_metrics": "ensemble",
    "Ensemble": "ensemble", "MAX_MEMBERS": "ensemble",
    # mil
    "Standardize": "mil", "MILModel": "mil", "Predicts": "mil",
    # sharing: save_pretrained / from_pretrained / push_to_hub on the model classes (implemented by milzoo.hub)
    "ModelSharing": "sharing", "SavesPretrained": "sharing", "model_sharing": "sharing",
    # sizing
    "TRAINING_COPIES": "sizing", "MAX_LOAD_BYTES": "sizing", "MAX_TENSORS": "sizing",
    "machine_memory_bytes": "sizing", "check_model_size": "sizing", "SizeGuard": "sizing",
    "guarded_build": "sizing", "requested_shape": "sizing",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
