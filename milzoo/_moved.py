"""Modules that moved when the core became packages by concept, and where their names live now.

``import milzoo.trainer`` (or ``from milzoo.trainer import Trainer``) keeps working: a finder at the end of
``sys.meta_path`` answers the old module name with a stand-in that warns once with a ``FutureWarning`` naming
the new place, and hands out the same objects as the new modules.  The table below is the one place that
knows the moves (timm and pytest keep such a table the same way); new code imports from the packages.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

#: old module -> (where to import its names from now, the module that defines them)
MOVED_MODULES: dict[str, tuple[str, str]] = {
    "milzoo.hookspecs": ("milzoo.registry", "milzoo.registry.hookspecs"),
    "milzoo.plugins": ("milzoo.registry", "milzoo.registry._manager"),
    "milzoo.provenance": ("milzoo.registry", "milzoo.registry._provenance"),
    "milzoo.recipebook": ("milzoo.recipe.book", "milzoo.recipe.book"),
    "milzoo.pretrained": ("milzoo.hub", "milzoo.hub.pretrained"),
    "milzoo.versions": ("milzoo.runs", "milzoo._version"),
    "milzoo.untrusted": ("milzoo.checkpoint", "milzoo._untrusted"),
    "milzoo.masking": ("milzoo.layers", "milzoo.layers.masking"),
    "milzoo.heads": ("milzoo.layers", "milzoo.layers.heads"),
    "milzoo.precision": ("milzoo.layers", "milzoo.layers.precision"),
    "milzoo.batch": ("milzoo.datasets", "milzoo.datasets.batch"),
    "milzoo.resident": ("milzoo.datasets.resident", "milzoo.datasets.resident"),
    "milzoo.protocols": ("milzoo.datasets", "milzoo.datasets.protocols"),
    "milzoo.output": ("milzoo.components", "milzoo.components.output"),
    "milzoo.build": ("milzoo.model", "milzoo.model.build"),
    "milzoo.ensemble": ("milzoo.model", "milzoo.model.ensemble"),
    "milzoo.sizing": ("milzoo.model", "milzoo.model.sizing"),
    "milzoo.loading": ("milzoo.checkpoint", "milzoo.checkpoint._verify"),
    "milzoo.trainer": ("milzoo.train", "milzoo.train.trainer"),
    "milzoo.train_settings": ("milzoo.train.settings", "milzoo.train.settings"),
    "milzoo.optim": ("milzoo.train.optim", "milzoo.train.optim"),
    "milzoo.averaging": ("milzoo.train", "milzoo.train.averaging"),
    "milzoo.distributed": ("milzoo.train", "milzoo.train.distributed"),
    "milzoo.progress": ("milzoo.train", "milzoo.train.progress"),
    "milzoo.runner": ("milzoo.runs", "milzoo.runs.runner"),
    "milzoo.jobs": ("milzoo.runs", "milzoo.runs.jobs"),
    "milzoo.hub_runs": ("milzoo.hub", "milzoo.hub._runs"),
    "milzoo.hub_folders": ("milzoo.hub", "milzoo.hub._folders"),
    "milzoo.modelcard": ("milzoo.hub", "milzoo.hub.modelcard"),
    "milzoo.listing": ("milzoo.cli.listing", "milzoo.cli.listing"),
    "milzoo.commands": ("milzoo.cli", "milzoo.cli"),
    "milzoo.commands.hub": ("milzoo.cli.hub", "milzoo.cli.hub"),
    "milzoo.commands.recipes": ("milzoo.cli.recipes", "milzoo.cli.recipes"),
    "milzoo.commands.report": ("milzoo.cli.report", "milzoo.cli.report"),
}

#: (old module, name) -> the module that defines that name now, where it is not the old module's new home
MOVED_NAMES: dict[tuple[str, str], str] = {
    ("milzoo.versions", "environment"): "milzoo.runs.environment",
    ("milzoo.versions", "git_sha"): "milzoo.runs.environment",
    ("milzoo.runner", "RESUME_FREE_KEYS"): "milzoo.runs.rundir",
    ("milzoo.runner", "holds_results"): "milzoo.runs.rundir",
    ("milzoo.runner", "remove_orphaned_temp_files"): "milzoo.runs.rundir",
    ("milzoo.runner", "check_run_dir"): "milzoo.runs.rundir",
    ("milzoo.runner", "prepare_run_dir"): "milzoo.runs.rundir",
    ("milzoo.runner", "MetricsWriter"): "milzoo.runs.rundir",
    ("milzoo.runner", "train_fold"): "milzoo.runs._fold",
    ("milzoo.runner", "summarize"): "milzoo.runs.summary",
    ("milzoo.build", "build_dataset"): "milzoo.datasets.protocols",
    ("milzoo.provenance", "missing_provider_text"): "milzoo.registry._providers",
    ("milzoo.hookspecs", "HOOK_KINDS"): "milzoo.registry._table",
    ("milzoo.trainer", "FoldData"): "milzoo.datasets.protocols",
    ("milzoo.trainer", "LossSums"): "milzoo.train._epoch",
    ("milzoo.trainer", "higher_is_better"): "milzoo.metrics",
}

_PACKAGES = {"milzoo.commands"}  # old packages: their old submodules must still import

#: importing module -> the old modules it imported (``milzoo plugins`` names plugins that still use them)
USES: dict[str, set[str]] = {}


def _importer() -> str:
    """The ``__name__`` of the module whose import statement reached the old name."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename == __file__ or frame.f_code.co_filename.startswith("<frozen")
                                 or "importlib" in frame.f_code.co_filename):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"


def uses_by_package() -> dict[str, list[str]]:
    """Top-level package of an importer -> the old modules it imported, sorted."""
    out: dict[str, set[str]] = {}
    for importer, olds in USES.items():
        out.setdefault(importer.split(".")[0], set()).update(olds)
    return {k: sorted(v) for k, v in out.items()}


def new_home(old_module: str, name: str) -> str:
    """The module that defines ``name`` of ``old_module`` now."""
    return MOVED_NAMES.get((old_module, name), MOVED_MODULES[old_module][1])


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        old = module.__name__
        public, defining = MOVED_MODULES[old]
        USES.setdefault(_importer(), set()).add(old)
        warnings.warn(
            f"{old} moved to {public} (the core is organised in packages by concept); the old import keeps "
            f"working for now and gives the same objects. Import from {public} instead.",
            FutureWarning, stacklevel=2,  # exec_module, then (warnings skips the import machinery) the importer
        )

        def __getattr__(name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            target = importlib.import_module(new_home(old, name))
            try:
                return getattr(target, name)
            except AttributeError:
                raise AttributeError(f"module {old!r} (moved to {public}) has no attribute {name!r}") from None

        module.__getattr__ = __getattr__
        module.__dir__ = lambda: sorted(dir(importlib.import_module(defining)))
        if old in _PACKAGES:
            module.__path__ = []


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, _Loader(), is_package=fullname in _PACKAGES)
        return None


def install() -> None:
    """Answer the old module names (last on ``sys.meta_path``: real modules always win)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
