"""milzoo: a plugin-based zoo of deep multiple-instance-learning models.

The Python API mirrors the CLI::

    import milzoo
    summary = milzoo.run("recipes/quickstart.toml", out="runs/qs")     # milzoo run
    recipe = milzoo.load_recipe("recipes/quickstart.toml", ["train.epochs=5"])  # milzoo validate
    milzoo.list_components("pooling")                                   # milzoo list pooling
    model = milzoo.load_model("runs/qs/fold-00/last")                   # a trained model, eval mode
    model = milzoo.build_model(recipe, in_shape=(166,), num_classes=2)  # an untrained one
    model = milzoo.create_model("mlp", "abmil", in_shape=(166,), num_classes=2)  # the same, with no recipe
    model.save_pretrained("hub/m"); milzoo.MILModel.from_pretrained("hub/m")   # or "org/name" on the Hub

Names are imported lazily so ``import milzoo`` stays fast.  The core is organised in packages by concept
(``registry``, ``recipe``, ``model``, ``checkpoint``, ``train``, ``runs``, ``hub``, ``cli``, ``datasets``,
``components``, ``layers``, ``report``, ``testing``); docs/architecture.md shows them.
"""

from milzoo import _moved
from milzoo._lazy import attach
from milzoo.registry.hookspecs import hookimpl

_moved.install()  # old module paths (milzoo.trainer, milzoo.batch, ...) keep working, with a FutureWarning

_EXPORTS = {
    "__version__": "milzoo._version",
    "run": "milzoo.runs.runner",
    "summarize": "milzoo.runs.summary",
    "load_recipe": "milzoo.recipe._validate",
    "validate_recipe": "milzoo.recipe._validate",
    "build_model": "milzoo.model.build",
    "build_components": "milzoo.model.build",
    "create_model": "milzoo.model.build",
    "load_model": "milzoo.checkpoint._model",
    "save_model": "milzoo.checkpoint._model",
    "list_components": "milzoo.registry._table",
    "get_component": "milzoo.registry._table",
    "plugin_records": "milzoo.registry._manager",
    "collate_bags": "milzoo.datasets.batch",
    "Bag": "milzoo.datasets.batch",
    "MILBatch": "milzoo.datasets.batch",
    "MILOutput": "milzoo.components.output",
    "MILModel": "milzoo.model.mil",
    "Ensemble": "milzoo.model.ensemble",
    # Hub
    "load_pretrained": "milzoo.hub._client",
    "push_to_hub": "milzoo.hub._client",
    "save_pretrained": "milzoo.hub._folders",
    # weights of other toolkits (`milzoo convert`)
    "convert": "milzoo.conversion._convert",
    "hookimpl": "milzoo.registry.hookspecs",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
