"""Datasets: bags and padded batches, dataset base classes, data checks, opening data files (regular files of a
size that fits in memory, CSV errors naming the line), evaluation protocols and a recipe's folds.

``resident`` (whole splits kept on the training device) is a public submodule; ``images`` holds the base of image
bags stored as index rows into one shared uint8 tensor.
"""

from milzoo._lazy import attach

_EXPORTS = {
    # base
    "MILDataset": "base", "BagListDataset": "base", "MILSubset": "base", "dataset_size_for_state": "base",
    "label_strata": "base",
    # batch
    "Bag": "batch", "MILBatch": "batch", "collate_bags": "batch",
    # checks
    "FLOAT32_MAX": "checks", "LABEL_CONVENTIONS": "checks", "class_indices": "checks",
    "first_nonfinite_row": "checks", "check_finite_features": "checks", "check_groups_disjoint": "checks",
    "shared_groups": "checks",
    # files
    "MAX_DATA_BYTES_ENV": "files", "max_data_bytes": "files", "check_data_file": "files",
    "read_data_bytes": "files", "parse_numeric_csv": "files", "csv_problem": "files",
    # images
    "IndexedImageBags": "images", "ResidentImageBags": "images",
    # labels
    "read_survival_labels": "labels",
    # protocols
    "FoldData": "protocols", "stratified_kfold": "protocols", "kfold_indices": "protocols",
    "warn_unstratified": "protocols", "check_trainable": "protocols", "assert_no_group_leak": "protocols",
    "carve_validation": "protocols", "make_folds": "protocols", "check_separated": "protocols",
    "dataset_info": "protocols", "build_dataset": "protocols", "folds_for": "protocols", "fold_count": "protocols",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
