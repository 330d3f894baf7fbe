"""Sharing trained models on the Hugging Face Hub, and the index of named pretrained models.

Download and push (``load_pretrained``, ``push_to_hub``, ``fetch``), Hub folders (``save_pretrained``,
``load_folder``), run directories as their source, model cards (``modelcard``), pretrained entries
(``pretrained``: installed packages first, then the Hub cache, then the Hub) and ``verify``.
"""

from milzoo._lazy import attach

_EXPORTS = {
    # what load_pretrained returns for a run of several folds
    "Ensemble": "milzoo.model.ensemble",
    # _client
    "LIBRARY_NAME": "_client", "ALLOW_PATTERNS": "_client", "HubError": "_client", "HubNotFoundError": "_client",
    "OfflineNotCachedError": "_client", "download": "_client", "parse_ref": "_client", "fetch": "_client",
    "load_pretrained": "_client", "push_to_hub": "_client",
    # _folders
    "save_pretrained": "_folders", "load_folder": "_folders",
    # _runs
    "ENSEMBLE_FORMAT": "_runs", "ENSEMBLE_FORMAT_VERSION": "_runs", "HUB_FORMAT_VERSION": "_runs",
    "README": "_runs", "RECIPE": "_runs", "Member": "_runs", "is_run_dir": "_runs", "select_checkpoints": "_runs",
    "run_metrics": "_runs",
    # modelcard
    "build_card": "modelcard", "render_card": "modelcard",
    # pretrained
    "UnpublishedModelError": "pretrained", "PretrainedEntry": "pretrained", "get_pretrained": "pretrained",
    "list_pretrained": "pretrained", "register_package_entries": "pretrained",
    # verify: a shared model measured again against its card
    "verify": "verify", "verify_folder": "verify", "Verification": "verify",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
