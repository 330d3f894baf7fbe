"""milzoo's built-in components, registered through the same hooks as any plugin."""

from milzoo.registry.hookspecs import hookimpl

__all__ = ["milzoo_register_datasets", "milzoo_register_encoders", "milzoo_register_losses", "milzoo_register_poolings",
           "milzoo_register_recipes"]


@hookimpl
def milzoo_register_encoders(register):
    from milzoo.builtin.encoders import IdentityEncoder, MLPEncoder

    register(IdentityEncoder)
    register(MLPEncoder)


@hookimpl
def milzoo_register_poolings(register):
    from milzoo.builtin.poolings import MaxPooling, MeanPooling

    register(MeanPooling)
    register(MaxPooling)


@hookimpl
def milzoo_register_losses(register):
    from milzoo.builtin.losses import BagCrossEntropy

    register(BagCrossEntropy, aliases=["ce"])


@hookimpl
def milzoo_register_datasets(register):
    from milzoo.builtin.classic import ClassicDataset

    register(ClassicDataset)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo") / "recipes")  # quickstart.toml (package data, declared in pyproject.toml)
