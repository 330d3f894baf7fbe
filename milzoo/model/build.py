"""Build components and models from recipe tables or checkpoint specs, and ``create_model`` from Python."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from milzoo.registry import get_component
from milzoo.components.base import ComponentConfig, Task
from milzoo.datasets.protocols import build_dataset  # noqa: F401 - defined in datasets/ now; still importable here
from milzoo.errors import ComponentError, UserError
from milzoo.model.mil import MILModel

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- create_model: a model in Python


def _table(arg: str, value: str | dict[str, Any]) -> dict[str, Any]:
    """A component argument of :func:`create_model` as a recipe table: ``"mlp"`` or ``{"name": "mlp", ...}``."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict):
        if not isinstance(value.get("name"), str):
            raise UserError(f"create_model({arg}=...) got a table without a 'name'; write {arg}={{'name': ..., "
                            "<options>}} or just the name (`milzoo list` shows the names).")
        return dict(value)
    raise UserError(f"create_model({arg}=...) takes a component name or a table {{'name': ..., <options>}}, as a "
                    f"recipe's [{arg}] section, not {type(value).__name__}.")


def _in_shape(in_shape) -> tuple[int, ...]:
    shape = (in_shape,) if isinstance(in_shape, int) and not isinstance(in_shape, bool) else in_shape
    ok = isinstance(shape, Sequence) and not isinstance(shape, str) and len(shape) > 0 and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    if not ok:
        raise UserError(f"create_model(in_shape={in_shape!r}): give the shape of one instance as positive integers, "
                        "e.g. in_shape=(1024,) for 1024 features or in_shape=(3, 28, 28) for images.")
    return tuple(int(d) for d in shape)


def _classes(num_classes, class_names, task: Task) -> tuple[int, list[str] | None]:
    if class_names is not None:
        names = list(class_names) if not isinstance(class_names, str) else None
        if not names or not all(isinstance(c, str) and c for c in names) or len(set(names)) != len(names):
            raise UserError(f"create_model(class_names={class_names!r}): give a list of distinct, non-empty class "
                            "names, in the order of the labels 0, 1, ...")
        if num_classes is not None and num_classes != len(names):
            raise UserError(f"create_model got num_classes={num_classes!r} and {len(names)} class_names; give one "
                            "of them (or make them agree).")
        num_classes = len(names)
    else:
        names = None
    if num_classes is None:
        if getattr(task, "classes", False):
            raise UserError(f"create_model needs num_classes= (or class_names=[...]): the {task.name!r} task "
                            "predicts classes, and without a dataset nothing else says how many.")
        return 1, None  # a task without classes sizes its head itself (Task.out_dim)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1 or (
            getattr(task, "classes", False) and num_classes < 2):
        raise UserError(f"create_model(num_classes={num_classes!r}): a classifier needs a whole number of at least "
                        "2 classes.")
    return num_classes, names


def create_model(
    encoder: str | dict[str, Any] | None = None,
    pooling: str | dict[str, Any] | None = None,
    *,
    in_shape: int | Sequence[int],
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    task: str | dict[str, Any] | None = None,
    augment: str | dict[str, Any] | None = None,
    standardize: bool | None = None,
    channels_last: bool | None = None,
    recipe: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    seed: int | None = None,
) -> MILModel:
    """Build an untrained :class:`MILModel` in Python, as ``timm.create_model`` does; no dataset is read.

    Components are given as a recipe's sections are: a name (``encoder="mlp"``) or a table with its options
    (``pooling={"name": "abmil", "attn_hidden": 64}``); the encoder defaults to ``identity`` and ``task`` to
    classification.  ``in_shape`` is one instance's shape (``(1024,)``, or ``1024``), and ``num_classes`` or
    ``class_names`` the classes (a task without classes, such as regression, needs neither).  ``standardize=True``
    adds the per-feature standardisation a run fits (``protocol.standardize``; its statistics start at 0 and 1).

    ``recipe=`` (a path, a shipped recipe's name or a dict; ``[data]`` may be left out) gives the components
    instead, with ``overrides`` as ``--set`` gives them; ``standardize`` and ``channels_last`` then come from its
    ``[protocol]`` and ``[train]``.  Everything is validated as a recipe is (every problem at once, "did you
    mean" for unknown names: a :class:`~milzoo.errors.RecipeError`).  ``seed=N`` builds under
    ``torch.manual_seed(N)`` without touching the global random generator; without it the global generator
    draws the initial weights, as for any ``nn.Module``.
    """
    from milzoo.recipe._toml import apply_overrides
    from milzoo.recipe._validate import load_recipe, validate_recipe

    if recipe is not None:
        given = [n for n, v in (("encoder", encoder), ("pooling", pooling), ("task", task), ("augment", augment),
                                ("standardize", standardize), ("channels_last", channels_last)) if v is not None]
        if given:
            raise UserError(f"create_model got recipe= and {', '.join(given)}=; the recipe gives those. Change them "
                            "in the recipe or with overrides=['pooling.attn_hidden=64', ...].")
        rec = load_recipe(recipe, overrides, require_data=False)
    else:
        if pooling is None:
            raise UserError("create_model needs pooling= (a name such as 'abmil', or a table {'name': ..., "
                            "<options>}); `milzoo list pooling` shows the installed poolings.")
        raw: dict[str, Any] = {"name": "create_model", "encoder": _table("encoder", encoder or "identity"),
                               "pooling": _table("pooling", pooling)}
        if augment is not None:
            raw["augment"] = _table("augment", augment)
        if task is not None:
            raw["task"] = _table("task", task)
        if standardize is not None:
            raw["protocol"] = {"standardize": standardize}
        if channels_last is not None:
            raw["train"] = {"channels_last": channels_last}
        rec = validate_recipe(apply_overrides(raw, overrides), "create_model(...)", require_data=False)
    shape = _in_shape(in_shape)
    task_cls = get_component("task", rec.root.task.name)
    k, names = _classes(num_classes, class_names, task_cls(rec.components["task"]))
    if seed is None:
        return build_model(rec, shape, k, names)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"create_model(seed={seed!r}): give a non-negative whole number, or leave it out.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(rec, shape, k, names)
