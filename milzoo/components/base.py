"""The interfaces every component implements.

A component is a class with a registry ``name`` and a pydantic ``Config`` that
validates its recipe options.  Plugins subclass one of the bases below and
register the class through a hook (see :mod:`milzoo.registry.hookspecs`).

Construction signatures (the registry and the model builder call these):

- ``Encoder(config, in_shape)``            instances ``[M, *in_shape]`` -> ``[M, out_dim]``
- ``Pooling(config, in_dim, num_classes)`` ``h [B, N, d]`` + ``mask [B, N]`` -> :class:`MILOutput`
- ``Loss(config, num_classes)``            ``(output, batch, state)`` -> :class:`LossResult`
- ``DatasetSource(config)``                ``.load()`` -> ``{split name: MILDataset}``
- ``Augment(config, in_shape)``            ``[M, *s]`` -> ``[V, M, *s]`` views (view 0 = weak)
- ``Task(config)``                         what a label is; bag outputs -> predictions and metrics
- ``Logger(config, run_dir)``              an experiment logger: hyperparameters, metrics per epoch, summary
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from milzoo.components.output import LossResult, MILOutput, TrainState

if TYPE_CHECKING:
    from milzoo.datasets.batch import MILBatch
    from milzoo.datasets.base import MILDataset


class ComponentConfig(BaseModel):
    """Base of every component's options.  Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class _Provenance:
    """``Cls.provenance``: ``{"plugin", "distribution", "version"}`` of the registration of this very class, ``{}``
    for a class that is not registered itself (a subclass of a registered class included).

    Asking builds the registry when it is not built yet (the registry sits above this module and is reached
    only when asked), so the answer never depends on whether something looked a name up before; while the
    registry is being built (a plugin asking from its own hook), it is what is known so far.
    """

    def __get__(self, obj: Any, owner: type) -> dict[str, str]:
        own = vars(owner).get("_milzoo_provenance")
        if own is None:
            from milzoo import registry

            return registry.provenance_of(owner)
        return dict(own)


class Component:
    """Mixin holding the registry metadata of a component class."""

    #: registry name, set by the class or by ``register(cls, name=...)``
    name: ClassVar[str] = ""
    #: options model; subclasses override it with their own ComponentConfig
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    #: plugin, distribution and version of the class's registration (the registry fills it in)
    provenance = _Provenance()

    @classmethod
    def downloads(cls, config: ComponentConfig) -> tuple[str, ...]:
        """The downloads (``milzoo data list`` names) this component reads with these options, so that
        ``milzoo data fetch --recipe R`` can fetch everything a recipe needs ahead of time; none by default."""
        return ()


class Encoder(Component, nn.Module):
    """Maps instances to feature vectors."""

    kind: ClassVar[str] = "encoder"

    def __init__(self, config: ComponentConfig, in_shape: tuple[int, ...]):
        nn.Module.__init__(self)
        self.config = config
        self.in_shape = tuple(in_shape)
        self.out_dim: int = 0  # subclasses set it

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def pool_bags(pooling: nn.Module, h: Tensor, mask: Tensor, lengths: Sequence[int] | None) -> MILOutput:
    """Call ``pooling(h, mask)``, passing the host ``lengths`` to a pooling whose ``takes_lengths`` says it
    wants them (any module: an aggregator inside a pooling need not be a :class:`Pooling`)."""
    if getattr(pooling, "takes_lengths", False):
        return pooling(h, mask, lengths=lengths)
    return pooling(h, mask)


class Pooling(Component, nn.Module):
    """Turns a padded batch of instance features into bag predictions."""

    kind: ClassVar[str] = "pooling"
    #: the loss used when a recipe names none
    default_loss: ClassVar[str] = "bag_ce"
    #: whether reordering a bag's instances leaves its outputs unchanged
    permutation_invariant: ClassVar[bool] = True
    #: the tasks (docs/tasks.md) the pooling's math serves; None: every task (its head has ``num_classes``
    #: outputs of any meaning)
    tasks: ClassVar[tuple[str, ...] | None] = None
    #: True when ``forward`` takes ``lengths``: each bag's number of real instances as Python integers (they are
    #: its first rows), which ``MILModel`` passes when the host knows them (``MILBatch.host_lengths``; else
    #: None).  A pooling that needs them on the host (a loop over bags, skipping the masking of a batch without
    #: padding) then reads nothing back from ``mask``: no host synchronisation on a GPU, no break in a compiled
    #: step.  See ``milzoo.layers.bag_lengths`` and ``milzoo.layers.is_padded``; callers use :func:`pool_bags`.
    takes_lengths: ClassVar[bool] = False

    def __init__(self, config: ComponentConfig, in_dim: int, num_classes: int):
        nn.Module.__init__(self)
        self.config = config
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)

    def forward(self, h: Tensor, mask: Tensor) -> MILOutput:  # pragma: no cover - interface
        raise NotImplementedError

    # --- optional capabilities -------------------------------------------------
    @property
    def scores_instances(self) -> bool:
        """True when :meth:`instance_logits` is implemented (needed by PSAli)."""
        return type(self).instance_logits is not Pooling.instance_logits

    def instance_logits(self, h: Tensor) -> Tensor:
        """Apply the bag classifier to single instances: ``[..., d] -> [..., k]``."""
        raise NotImplementedError(f"pooling {self.name!r} cannot score single instances")

    def check_task(self, task: "Task") -> None:
        """Refuse a task this pooling cannot serve (a :class:`milzoo.errors.ComponentError` naming the fix).

        By default a pooling serves the tasks of its ``tasks`` attribute (every task when None); a pooling whose
        answer depends on its options (PSAtt's prototype update) overrides this.
        """
        allowed = type(self).tasks
        if allowed is not None and task.name not in allowed:
            from milzoo.errors import ComponentError

            raise ComponentError(
                f"pooling {self.name!r} cannot be trained for the {task.name!r} task: it serves "
                f"{', '.join(repr(t) for t in allowed)} (its docs page says why). Choose another pooling (abmil, "
                "transmil, mean or max serve every task) or another task."
            )

    def after_forward(self, out: MILOutput, batch: "MILBatch") -> None:
        """Called by the trainer after each *training* forward, under ``no_grad``.

        Poolings with non-gradient state (PSAtt's prototypes) update it here.
        Under ``torch.distributed`` the pooling must all-reduce its statistics
        so every rank applies the same update.
        """


class Loss(Component, nn.Module):
    """A training objective.  A recipe may list several; their totals add up."""

    kind: ClassVar[str] = "loss"
    #: whether the loss reads class indices from ``batch.y`` (every classification loss); a loss of another
    #: task (regression, survival) sets False, and the model builder refuses a mismatch with the task
    needs_classes: ClassVar[bool] = True

    def __init__(self, config: ComponentConfig, num_classes: int):
        nn.Module.__init__(self)
        self.config = config
        self.num_classes = int(num_classes)

    def bind(self, model: BoundModel, dataset: "MILDataset") -> None:
        """Check compatibility with the model and allocate per-bag state.

        Raise :class:`milzoo.errors.ComponentError` with a clear message when the
        loss cannot work with this model (e.g. it needs instance scoring).
        """

    def forward(
        self, out: MILOutput, batch: "MILBatch", state: TrainState
    ) -> LossResult:  # pragma: no cover - interface
        raise NotImplementedError

    def end_epoch(self, state: TrainState) -> None:
        """Called after each training epoch (e.g. DEMIL's soft-label schedule)."""


class Augment(Component, nn.Module):
    """Makes augmented views of instances as batched tensor ops (view 0 is the weak one)."""

    kind: ClassVar[str] = "augment"

    def __init__(self, config: ComponentConfig, in_shape: tuple[int, ...]):
        nn.Module.__init__(self)
        self.config = config
        self.in_shape = tuple(in_shape)
        self.num_views: int = 1

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class Task(Component, nn.Module):
    """What a bag's label is, and what is done with the model's bag outputs (docs/tasks.md).

    A task says how many outputs the bag head has (:meth:`out_dim`; poolings receive it as ``num_classes``),
    which loss trains it when a recipe names none (:attr:`default_loss`), which per-fold state is fitted on
    the training bags (:meth:`fit`: e.g. a regression target's mean and scale, survival time bins; kept in
    buffers, so the checkpoint carries it), what a prediction is (:meth:`predict`, in the label's own units)
    and how predictions are measured (:meth:`metrics`).  ``MILModel.task`` holds the instance.

    Labels reach the task as ``MILBatch.y``: ``[B]`` long class indices for classification, ``[B]`` or
    ``[B, t]`` float for regression, ``[B, 2]`` float ``(time, event)`` for survival; a dataset's ``labels``
    property returns them as a numpy array of the same shape, ``strata`` what k-fold splits stratify by.
    """

    kind: ClassVar[str] = "task"
    #: the loss used when a recipe names none; None: the pooling's own ``default_loss`` (classification)
    default_loss: ClassVar[str | None] = None
    #: the metric the (labelled, optimistic) "best epoch on test" figure is chosen by
    headline: ClassVar[str] = "acc"
    #: whether a binary threshold may be chosen on validation (``protocol.threshold = "youden"``)
    thresholds: ClassVar[bool] = False
    #: whether labels are class indices (losses such as ``bag_ce`` and class-specific poolings need that)
    classes: ClassVar[bool] = False

    def __init__(self, config: ComponentConfig):
        nn.Module.__init__(self)
        self.config = config

    def out_dim(self, num_classes: int) -> int:
        """How many bag outputs the pooling's head has (``num_classes``: the dataset's number of classes)."""
        raise NotImplementedError  # pragma: no cover - interface

    def check_labels(self, labels: Any, where: str) -> None:
        """Refuse labels this task cannot use (a :class:`milzoo.errors.DataError` naming the fix)."""

    def fit(self, train: "MILDataset") -> None:
        """Fit per-fold state on the training bags' labels (buffers); called once per fold before training."""

    def predict(self, out: MILOutput) -> Tensor:
        """``[B, p]`` predictions in the label's own units (classification: class probabilities)."""
        raise NotImplementedError  # pragma: no cover - interface

    def columns(self, class_names: list[str]) -> list[str]:
        """Names of the ``p`` prediction columns (the predictions file's header after ``bag_id`` and labels)."""
        raise NotImplementedError  # pragma: no cover - interface

    def label_columns(self) -> list[str]:
        """Names of the label columns of the predictions file."""
        return ["label"]

    def metrics(self, y: Any, pred: Any, threshold: float | None = None) -> dict[str, float]:
        """Metrics of a split's predictions ``pred`` ``[n, p]`` against its labels ``y`` (numpy arrays)."""
        raise NotImplementedError  # pragma: no cover - interface

    def report_figures(self, run_dir: Any, fold: int = 0) -> list[tuple[str, bytes, str]]:
        """What ``milzoo report`` draws for this task beyond the curves: ``(title, PNG bytes, caption)`` per
        figure, from a run directory's files (e.g. survival's Kaplan-Meier curves); none by default."""
        return []

    def example_labels(self, n: int, seed: int = 0) -> list[Any]:
        """``n`` plausible labels of this task (the contract suite trains and checks losses on them)."""
        raise NotImplementedError(f"task {self.name!r} gives no example labels")  # pragma: no cover - interface


class BoundModel(Protocol):
    """What a loss may use of the model it is bound to (:meth:`Loss.bind`); ``MILModel`` provides it.

    Declared here so that components never import the model that is made of them.
    """

    @property
    def encoder(self) -> Encoder: ...

    @property
    def pooling(self) -> Pooling: ...

    @property
    def augment(self) -> Augment | None: ...

    @property
    def in_shape(self) -> tuple[int, ...]: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def class_names(self) -> list[str]: ...

    @property
    def task(self) -> Task: ...


class DatasetSource(Component):
    """Loads a dataset's splits.  ``load()`` returns ``{split: MILDataset}``.

    Split names: ``"all"`` (one pool, e.g. the classic benchmarks, to be split by
    the protocol), ``"train"``, ``"val"``, ``"test"``.
    """

    kind: ClassVar[str] = "dataset"

    def __init__(self, config: ComponentConfig):
        self.config = config

    def load(self) -> dict[str, "MILDataset"]:  # pragma: no cover - interface
        raise NotImplementedError


class Logger(Component):
    """An experiment logger (docs/tracking.md): receives a run's resolved recipe as hyperparameters, the metrics of
    every epoch per split and fold, and the final summary.

    ``Logger(config, run_dir)`` is built before anything is written: check there that what the logger needs is
    installed (:func:`milzoo.tracking.require`) and write nothing.  Then, once per start of the run (a
    ``--resume`` is a new start), in the process that writes the run directory:

    - :meth:`start` with a :class:`~milzoo.components.output.RunInfo`;
    - :meth:`log_metrics` once per epoch and split of each fold: ``split`` is ``"train"`` (the mean training
      loss, its parts, ``lr``, ``time_s``) or an evaluated split (``"val"``, ``"test"``, ...), ``metrics`` maps
      names to floats (an undefined metric is NaN), epochs are numbered from 0 as in ``metrics.jsonl``.  An epoch
      is logged once its checkpoint is saved; the first epoch a start logs of a fold may repeat epochs that an
      interrupted start logged after its last checkpoint (a logger that can drops those, as ``metrics.jsonl``
      does);
    - :meth:`finish` with summary.json's content once every fold is complete (else ``None``) and how the start
      ended: ``"finished"``, ``"interrupted"``, ``"terminated"``, ``"diverged"`` or ``"failed"``.

    Loggers see figures the trainer has already computed and read back: they add no work to a training step.
    An error in :meth:`log_metrics` stops that logger (with a warning), never the training.
    """

    kind: ClassVar[str] = "logger"

    def __init__(self, config: ComponentConfig, run_dir: Any):
        from pathlib import Path

        self.config = config
        self.run_dir = Path(run_dir)

    def start(self, run: Any) -> None:
        """A start of the run begins (``run``: a :class:`~milzoo.components.output.RunInfo`)."""

    def log_metrics(self, fold: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        """The figures of one split of one epoch of ``fold``."""
        raise NotImplementedError  # pragma: no cover - interface

    def finish(self, summary: dict[str, Any] | None, outcome: str) -> None:
        """The start ended: ``summary`` (summary.json) when the run is complete, else None."""


KINDS: dict[str, type] = {
    "encoder": Encoder,
    "pooling": Pooling,
    "loss": Loss,
    "dataset": DatasetSource,
    "augment": Augment,
    "task": Task,
    "logger": Logger,
}


def component_options(component: Any) -> dict[str, Any]:
    """The JSON-able options of a component instance (without its name)."""
    return component.config.model_dump(mode="json", exclude={"name"})


