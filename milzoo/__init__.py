"""milzoo: a plugin-based zoo of deep multiple-instance-learning models.

The Python API mirrors the CLI::

    import milzoo
    summary = milzoo.run("recipes/quickstart.toml", out="runs/qs")     # milzoo run
    recipe = milzoo.load_recipe("recipes/quickstart.toml", ["train.epochs=5"])  # milzoo validate
    milzoo.list_components("pooling")                                   # milzoo list pooling
    model = milzoo.load_model("runs/qs/fold-00/last")                   # a trained model, eval mode
    model = milzoo.build_model(recipe, in_shape=(166,), num_classes=2)  # an untrained one

Names are imported lazily so ``import milzoo`` stays fast.
"""

from milzoo.hookspecs import hookimpl

_LAZY = {
    "run": ("milzoo.runner", "run"),
    "summarize": ("milzoo.runner", "summarize"),
    "load_recipe": ("milzoo.recipe", "load_recipe"),
    "validate_recipe": ("milzoo.recipe", "validate_recipe"),
    "build_model": ("milzoo.build", "build_model"),
    "build_components": ("milzoo.build", "build_components"),
    "load_model": ("milzoo.checkpoint", "load_model"),
    "save_model": ("milzoo.checkpoint", "save_model"),
    "list_components": ("milzoo.registry", "list_components"),
    "get_component": ("milzoo.registry", "get_component"),
    "plugin_records": ("milzoo.plugins", "plugin_records"),
    "collate_bags": ("milzoo.batch", "collate_bags"),
    "Bag": ("milzoo.batch", "Bag"),
    "MILBatch": ("milzoo.batch", "MILBatch"),
    "MILOutput": ("milzoo.output", "MILOutput"),
    "MILModel": ("milzoo.model", "MILModel"),
    # Hub (milzoo.hub)
    "load_pretrained": ("milzoo.hub", "load_pretrained"),
    "push_to_hub": ("milzoo.hub", "push_to_hub"),
    "save_pretrained": ("milzoo.hub", "save_pretrained"),
}

__all__ = ["hookimpl", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'milzoo' has no attribute {name!r}")
