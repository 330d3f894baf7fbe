"""milzoo's built-in components, registered through the same hooks as any plugin."""

from milzoo.registry.hookspecs import hookimpl

__all__ = ["milzoo_register_datasets", "milzoo_register_encoders", "milzoo_register_losses", "milzoo_register_poolings",
           "milzoo_register_recipes", "milzoo_register_tasks", "milzoo_register_loggers", "milzoo_model_sharing"]


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
    from milzoo.builtin.losses import BagCrossEntropy, HuberLoss, L1Loss, MSELoss

    register(BagCrossEntropy, aliases=["ce"])
    register(MSELoss)
    register(L1Loss)
    register(HuberLoss)


@hookimpl
def milzoo_register_tasks(register):
    from milzoo.builtin.tasks import ClassificationTask, RegressionTask

    register(ClassificationTask)
    register(RegressionTask)


@hookimpl
def milzoo_register_loggers(register):
    from milzoo.builtin.loggers import CSVLogger, MLflowLogger, TensorBoardLogger, WandbLogger

    register(CSVLogger)
    register(TensorBoardLogger)
    register(MLflowLogger)
    register(WandbLogger)


@hookimpl
def milzoo_register_datasets(register):
    from milzoo.builtin.classic import ClassicDataset

    register(ClassicDataset)


@hookimpl
def milzoo_register_recipes(register):
    from importlib.resources import files

    register(files("milzoo") / "recipes")  # quickstart.toml (package data, declared in pyproject.toml)


@hookimpl
def milzoo_model_sharing():
    """``model.save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` (milzoo.model.sharing) are the Hub's
    functions: the model layer declares the contract, this top layer supplies it (docs/architecture.md)."""
    from milzoo.hub._client import load_pretrained, push_to_hub
    from milzoo.hub._folders import save_pretrained
    from milzoo.model.sharing import ModelSharing

    return ModelSharing(save=save_pretrained, load=load_pretrained, push=push_to_hub)
