"""The recipe's own sections as pydantic models, and the upper bounds on its counts.

:class:`RecipeModel` is the root: the component tables (``data``, ``encoder``, ``pooling``, ``augment``,
``loss``, ``task``, ``log``) are :class:`ComponentTable` references whose options each component's own ``Config`` validates
(:mod:`milzoo.recipe._validate`); the other sections (``optim``, ``schedule``, ``train``, ``protocol``) are
checked here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "MAX_EPOCHS", "MAX_REPEATS", "MAX_SEED", "MAX_THREADS", "MAX_WORKERS", "AverageConfig", "ComponentTable",
    "EarlyStoppingConfig", "ModelRecipeModel", "OptimConfig", "ProtocolConfig", "RecipeModel", "ScheduleConfig",
    "TrainConfig",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: upper bounds on counts that are absurd long before they are unrepresentable (``epochs = 10**23`` would
#: otherwise start a run that never ends, ``num_workers = 100000`` would fork that many processes)
MAX_EPOCHS = 1_000_000
MAX_THREADS = 1024
MAX_WORKERS = 256
MAX_REPEATS = 1000
#: seeds feed numpy's RandomState (below 2**32) after adding per-fold offsets
MAX_SEED = 2**31 - 1


class ComponentTable(BaseModel):
    """A component reference: ``name`` plus that component's own options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD only")
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleConfig(_Section):
    name: Literal["constant", "step", "cosine"] = "constant"
    milestones: list[int] = Field(default_factory=list, description="epochs at which step decay applies")
    gamma: float = Field(default=0.1, gt=0, le=1)
    min_lr: float = Field(default=0.0, ge=0, description="cosine floor")

    @model_validator(mode="after")
    def _milestones(self):
        if self.name == "step" and not self.milestones:
            raise ValueError("schedule 'step' needs `milestones`, e.g. [10]")
        if any(m <= 0 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ValueError("milestones must be positive and increasing")
        return self


class EarlyStoppingConfig(_Section):
    patience: int = Field(default=10, ge=1, le=MAX_EPOCHS)
    min_epochs: int = Field(default=0, ge=0, le=MAX_EPOCHS)


class AverageConfig(_Section):
    kind: Literal["swa", "ema"] = "swa"
    start: float = Field(default=0.75, ge=0, lt=1,
                         description="fraction of the epochs after which averaging starts (swa default 0.75, ema 0)")
    decay: float = Field(default=0.99, gt=0, lt=1, description="ema only: weight of the old average per step")

    @model_validator(mode="before")
    @classmethod
    def _ema_starts_at_zero(cls, data):
        if isinstance(data, dict) and data.get("kind") == "ema" and "start" not in data:
            return {**data, "start": 0.0}
        return data


class TrainConfig(_Section):
    epochs: int = Field(default=20, gt=0, le=MAX_EPOCHS)
    batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        default=1, description="bags per optimiser step; auto: the per-device default (1 on a CPU, 4 on a GPU)")
    eval_batch_size: int | None = Field(default=None, gt=0)
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N")
    precision: Literal["fp32", "bf16", "fp16", "fp64", "auto"] = Field(
        default="fp32",
        description="autocast dtype; auto: bf16 on a GPU with bf16 or a CPU with AVX-512, else fp32 (bf16 is "
        "emulated, so slower, on AVX2-only CPUs); fp64: weights, inputs and losses in float64 (no autocast), "
        "for numerical comparisons with another implementation, about 2x slower",
    )
    channels_last: bool = False
    grad_clip: float | None = Field(default=None, gt=0, description="clip total gradient norm")
    freeze_encoder_epochs: int = Field(default=0, ge=0, le=MAX_EPOCHS)
    num_workers: int = Field(default=0, ge=0, le=MAX_WORKERS)
    threads: int | None = Field(default=None, gt=0, le=MAX_THREADS,
                                description="torch CPU threads (small models run faster on 1)")
    progress: bool = True
    early_stopping: EarlyStoppingConfig | None = None
    average: AverageConfig | None = Field(
        default=None, description="evaluate and save an average of the weights (swa or ema) instead of the last ones")
    deterministic: bool = Field(default=False, description="torch.use_deterministic_algorithms")
    data_on_device: bool | Literal["auto"] = Field(
        default="auto",
        description="keep datasets that support it (image bags, cached slides) on the training device and build "
        "batches there; auto: when they take at most half of the device's free memory (always on a CPU); "
        "false: the DataLoader path (docs/performance.md)",
    )
    compile: bool | Literal["encoder", "step", "reduce-overhead"] = Field(
        default=False,
        description="torch.compile: true or 'encoder' compiles the encoder; 'step' the training step's forward, "
        "prototype update and losses (few fused kernels); 'reduce-overhead' the same replayed as a CUDA graph "
        "on a GPU (fixed bags per step and bag size; other batches run eagerly). Opt-in; docs/performance.md",
    )


class ProtocolConfig(_Section):
    kind: Literal["holdout", "cv", "cv_ensemble"] = "holdout"
    folds: int = Field(default=10, ge=2)
    repeats: int = Field(default=1, ge=1, le=MAX_REPEATS, description="repeated CV with different fold seeds")
    val_fraction: float = Field(default=0.0, ge=0, lt=0.5, description="validation carved from training bags")
    standardize: bool = Field(default=False, description="standardise features on each fold's training bags")
    monitor: str = Field(default="loss", description="validation metric for model selection")
    eval_splits: list[str] | None = Field(default=None, description="splits evaluated each epoch (default: all but train)")
    threshold: Literal["argmax", "youden"] = Field(default="argmax", description="binary threshold rule (youden: chosen on validation)")
    patient_metrics: Literal["none", "mean"] = Field(
        default="none", description="also measure each split per patient (the dataset's groups): 'mean' averages "
        "a patient's bag predictions; metrics named patient_<metric> (docs/tasks.md)")


class RecipeModel(_Section):
    name: str = "run"
    description: str = ""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    data: ComponentTable
    encoder: ComponentTable = ComponentTable(name="identity")
    pooling: ComponentTable
    augment: ComponentTable | None = None
    loss: list[ComponentTable] = Field(default_factory=list)
    #: what a label is (docs/tasks.md): classification unless the recipe says otherwise
    task: ComponentTable = ComponentTable(name="classification")
    #: experiment loggers, one ``[[log]]`` table each (docs/tracking.md); they never change what a run computes
    log: list[ComponentTable] = Field(default_factory=list)
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    protocol: ProtocolConfig = ProtocolConfig()


class ModelRecipeModel(RecipeModel):
    """A recipe read only to build a model (``milzoo.create_model(recipe=...)``): ``[data]`` may be left out, since
    the input shape and the classes are given instead.  Every other section is checked as in any recipe."""

    data: ComponentTable | None = None
