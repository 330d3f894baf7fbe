"""Build components and models from recipe tables or checkpoint specs."""

from __future__ import annotations

from typing import Any

from milzoo.registry import get_component
from milzoo.components.base import ComponentConfig, Task
from milzoo.datasets.protocols import build_dataset  # noqa: F401 - defined in datasets/ now; still importable here
from milzoo.errors import ComponentError
from milzoo.model.mil import MILModel


def _config(kind: str, spec: dict[str, Any] | ComponentConfig, name: str | None = None):
    if isinstance(spec, ComponentConfig):
        cls = get_component(kind, name)
        return cls, spec
    spec = dict(spec)
    cls = get_component(kind, spec.pop("name"))
    return cls, cls.Config.model_validate(spec)


def build_components(
    encoder: dict[str, Any],
    pooling: dict[str, Any],
    in_shape: tuple[int, ...],
    num_classes: int,
    augment: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
    standardize: bool = False,
    channels_last: bool = False,
    task: dict[str, Any] | Task | None = None,
) -> MILModel:
    """Build a :class:`MILModel` from ``{"name": ..., **options}`` tables.

    ``num_classes`` is the size of the pooling's head (a task's :meth:`~milzoo.components.Task.out_dim`);
    ``task`` is the task's table or an already built task, classification when None.
    """
    if isinstance(task, Task):
        task_obj = task
    else:
        task_cls, task_cfg = _config("task", task or {"name": "classification"})
        task_obj = task_cls(task_cfg)
    enc_cls, enc_cfg = _config("encoder", encoder)
    enc = enc_cls(enc_cfg, tuple(in_shape))
    if not getattr(enc, "out_dim", 0):
        raise ComponentError(f"encoder {enc_cls.name!r} did not set out_dim; it is broken (report it to its author).")
    pool_cls, pool_cfg = _config("pooling", pooling)
    pool = pool_cls(pool_cfg, enc.out_dim, int(num_classes))
    pool.check_task(task_obj)
    aug = None
    if augment:
        aug_cls, aug_cfg = _config("augment", augment)
        aug = aug_cls(aug_cfg, tuple(in_shape))
    return MILModel(enc, pool, aug, standardize=standardize, class_names=class_names, channels_last=channels_last,
                    task=task_obj)


def build_model(recipe, in_shape: tuple[int, ...], num_classes: int, class_names: list[str] | None = None) -> MILModel:
    """Build the model a validated :class:`~milzoo.recipe.Recipe` describes (``num_classes``: the dataset's;
    the pooling's head gets the task's ``out_dim`` of it)."""
    comps = recipe.components
    table = lambda key: {"name": getattr(recipe.root, key).name, **comps[key].model_dump()}  # noqa: E731
    task_cls, task_cfg = _config("task", table("task") if comps.get("task") is not None else {"name": "classification"})
    task = task_cls(task_cfg)
    return build_components(
        encoder=table("encoder") if recipe.root.encoder else {"name": "identity"},
        pooling=table("pooling"),
        augment=table("augment") if recipe.root.augment is not None else None,
        task=task,
        in_shape=in_shape,
        num_classes=task.out_dim(num_classes),
        class_names=class_names,
        standardize=recipe.root.protocol.standardize,
        channels_last=recipe.root.train.channels_last,
    )


def build_losses(recipe, model: MILModel, num_classes: int) -> list:
    """The recipe's losses, or the task's (else the pooling's) default loss when the recipe names none.

    Each loss is built for the model's head size (``model.num_classes``, the task's ``out_dim``), which is
    ``num_classes`` for classification; the argument stays for the callers that pass it.
    """
    tables = [(t.name, c) for t, c in zip(recipe.root.loss, recipe.components["loss"])]
    if not tables:
        default = getattr(model.task, "default_loss", None) or type(model.pooling).default_loss
        cls = get_component("loss", default)
        tables = [(default, cls.Config())]
    losses = []
    for name, cfg in tables:
        cls = get_component("loss", name)
        if getattr(cls, "needs_classes", True) != bool(getattr(model.task, "classes", False)):
            raise ComponentError(_task_mismatch(cls, model.task))
        losses.append(cls(cfg, model.num_classes))
    return losses


def _task_mismatch(loss: type, task) -> str:
    default = getattr(task, "default_loss", None)
    if getattr(loss, "needs_classes", True):
        return (f"the {loss.name!r} loss trains class labels, but the recipe's task is {task.name!r}; name a loss "
                f"of that task in [[loss]] (or leave [[loss]] out: its default is {default!r}; docs/tasks.md).")
    return (f"the {loss.name!r} loss trains another task's labels, not the class labels of the {task.name!r} "
            "task; leave [[loss]] out (the pooling's own loss) or name a classification loss such as bag_ce.")
