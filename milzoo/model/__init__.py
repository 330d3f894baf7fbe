"""The model: ``MILModel`` (standardise -> augment -> encoder -> pooling), built from a recipe or a
checkpoint, fold ensembles, the one decision rule from probabilities to a class, and sizing before anything is
allocated."""

from milzoo._lazy import attach

_EXPORTS = {
    # build
    "build_components": "build", "build_model": "build", "build_losses": "build", "build_dataset": "milzoo.datasets.protocols",
    # decision (one rule from probabilities to a class, and its words)
    "Decision": "decision", "decide": "decision", "decide_output": "decision", "predict_classes": "decision",
    "model_decisions": "decision", "rule_text": "decision", "apply_recorded_threshold": "decision",
    "recorded_threshold": "decision", "summary_rule_text": "decision", "summary_has_classes": "decision",
    # ensemble
    "fold_predictions": "ensemble", "majority_vote": "ensemble", "ensemble_metrics": "ensemble",
    "Ensemble": "ensemble", "MAX_MEMBERS": "ensemble",
    # mil
    "Standardize": "mil", "MILModel": "mil", "Predicts": "mil",
    # sizing
    "TRAINING_COPIES": "sizing", "MAX_LOAD_BYTES": "sizing", "MAX_TENSORS": "sizing",
    "machine_memory_bytes": "sizing", "check_model_size": "sizing", "SizeGuard": "sizing",
    "guarded_build": "sizing", "requested_shape": "sizing",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
