"""Recipes: TOML files that name components by registry name and set their options.

Validation happens in two layers, and every problem of both layers is reported
at once with its dotted path:

1. the recipe's own sections (``train``, ``optim``, ``schedule``, ``protocol``)
   against the pydantic models below;
2. each component table (``data``, ``encoder``, ``pooling``, ``augment``,
   ``loss[i]``) against the ``Config`` model of the component it names, so a
   third-party component brings its own schema.  Unknown names get "did you
   mean" suggestions.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import fsspec
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from milzoo.registry import _provenance as provenance
from milzoo.registry import _table as registry
from milzoo.components.base import ComponentConfig
from milzoo.errors import RecipeError, UnknownComponentError


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
    compile: bool = Field(default=False, description="torch.compile the encoder (opt-in; docs/performance.md)")


class ProtocolConfig(_Section):
    kind: Literal["holdout", "cv", "cv_ensemble"] = "holdout"
    folds: int = Field(default=10, ge=2)
    repeats: int = Field(default=1, ge=1, le=MAX_REPEATS, description="repeated CV with different fold seeds")
    val_fraction: float = Field(default=0.0, ge=0, lt=0.5, description="validation carved from training bags")
    standardize: bool = Field(default=False, description="standardise features on each fold's training bags")
    monitor: str = Field(default="loss", description="validation metric for model selection")
    eval_splits: list[str] | None = Field(default=None, description="splits evaluated each epoch (default: all but train)")
    threshold: Literal["argmax", "youden"] = Field(default="argmax", description="binary threshold rule (youden: chosen on validation)")


class RecipeModel(_Section):
    name: str = "run"
    description: str = ""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    data: ComponentTable
    encoder: ComponentTable = ComponentTable(name="identity")
    pooling: ComponentTable
    augment: ComponentTable | None = None
    loss: list[ComponentTable] = Field(default_factory=list)
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    protocol: ProtocolConfig = ProtocolConfig()


class Recipe:
    """A validated recipe: the root sections plus each component's validated Config."""

    def __init__(self, root: RecipeModel, components: dict[str, Any], source: str):
        self.root = root
        self.components = components  # "data"/"encoder"/"pooling"/"augment" -> Config; "loss" -> list
        self.source = source

    def __getattr__(self, item):
        return getattr(self.root, item)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (defaults filled in), JSON/TOML-able."""
        d = self.root.model_dump(mode="json", exclude_none=True)
        for key in ("data", "encoder", "pooling", "augment"):
            cfg = self.components.get(key)
            if cfg is not None:
                d[key] = {"name": getattr(self.root, key).name, **cfg.model_dump(mode="json", exclude_none=True)}
        d["loss"] = [
            {"name": t.name, **c.model_dump(mode="json", exclude_none=True)}
            for t, c in zip(self.root.loss, self.components["loss"])
        ]
        return d

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# --------------------------------------------------------------------------- parsing


def _loc(path: tuple) -> str:
    return ".".join(str(p) for p in path if p not in ("function-after",)) or "(root)"


def _fields_at(model: type[BaseModel] | None, loc: list[str]) -> list[str]:
    """Field names of the (nested) model that holds the key at ``loc``."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model is not None else None
        ann = getattr(field, "annotation", None)
        # ``Section | None`` (an optional sub-table): look inside the union
        candidates = [ann, *typing.get_args(ann)]
        model = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(model.model_fields) if model is not None else []


#: how pydantic names the member of a union in an error's location ("constrained-int", "literal['auto']")
_UNION_MEMBER = re.compile(r"^(constrained-\w+|literal\[.*\]|(int|float|str|bool|list|dict|tuple)(\[.*\])?)$")


def _pydantic_problems(
    err: ValidationError, prefix: str = "", fields: list[str] | None = None, model: type[BaseModel] | None = None
) -> list[str]:
    out: list[str] = []
    union_at: dict[str, int] = {}  # a value that fits no member of a union: one problem, every member's reason
    for e in err.errors(include_url=False):
        loc = [str(p) for p in e["loc"] if not str(p).startswith("function-")]
        if len(loc) > 1 and _UNION_MEMBER.match(loc[-1]) and e["type"] not in ("extra_forbidden", "missing"):
            where = ".".join([prefix, *loc[:-1]] if prefix else loc[:-1])
            if where in union_at:
                out[union_at[where]] += f"; or {e['msg'][0].lower()}{e['msg'][1:]}"
            else:
                union_at[where] = len(out)
                out.append(f"{where}: {e['msg']}")
            continue
        where = ".".join([prefix, *loc] if prefix else loc) or prefix or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not an option here)"
            options = fields if model is None else _fields_at(model, loc)
            close = difflib.get_close_matches(str(loc[-1]) if loc else "", options or [], n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
        elif e["type"] == "missing":
            msg = "required key is missing"
        out.append(f"{where}: {msg}")
    return out


#: how a value that was meant as TOML (a list, table, quoted string) starts
_TOML_START = ("[", "{", '"', "'")


def parse_value(text: str, item: str | None = None) -> Any:
    """Parse an override value as a TOML value; a bare word (``musk2``, ``/data/x.csv``) is a string.

    A value that is empty, or that starts like a TOML list, table or quoted string but does not parse
    (``[8,``, ``"abc``), is an error naming the override, never silently a string.
    """
    item = item if item is not None else text
    stripped = text.strip()
    if not stripped:
        raise RecipeError("overrides", [f"{item!r}: the value is empty; write key.path=\"\" for an empty string"])
    try:
        return tomllib.loads(f"v = {stripped}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if stripped.startswith(_TOML_START) or stripped.endswith(("]", "}", '"', "'")):
            raise RecipeError("overrides", [
                f"{item!r}: the value {stripped!r} is not valid TOML ({exc}); write lists as [1, 2], tables as "
                "{a = 1}, strings in quotes (--set 'name=\"my run\"')"]) from None
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (list items by index: ``loss.0.lam=0.1``)."""
    data = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError("overrides", [f"{item!r}: an override must look like key.path=value"])
        key, value = item.split("=", 1)
        if not key.strip():
            raise RecipeError("overrides", [f"{item!r}: empty key"])
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts):
            raise RecipeError("overrides", [f"{item!r}: the key {key.strip()!r} has an empty part (two dots in a "
                                            "row, or a dot at either end); write it like train.epochs"])
        node: Any = data
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise RecipeError("overrides", [f"{item!r}: {'.'.join(parts[: i + 1])} is not an item of the list"])
                node = node[int(p)]
            else:
                node = node.setdefault(p, {})
                if not isinstance(node, (dict, list)):
                    raise RecipeError("overrides", [f"{item!r}: {'.'.join(parts[: i + 1])} is not a table"])
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise RecipeError("overrides", [f"{item!r}: no list item {last}"])
            node[int(last)] = parse_value(value, item)
        else:
            node[last] = parse_value(value, item)
    return data


#: TOML integers are 64-bit signed (the spec requires an error beyond that; tomllib accepts any size)
_INT64 = (-(2**63), 2**63 - 1)
#: nesting a recipe never needs (a deeper one is a mistake or an attack; it would hit Python's recursion limit)
_MAX_DEPTH = 32


def _value_problems(value: Any, where: str, out: list[str], depth: int = 0) -> None:
    """Integers beyond 64 bits and NaN/inf floats anywhere in a recipe: one problem each, with its path."""
    if depth > _MAX_DEPTH:
        out.append(f"{where}: nested more than {_MAX_DEPTH} levels deep")
        return
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            digits = len(str(abs(value))) if value.bit_length() < 14000 else "thousands of"
            out.append(f"{where}: an integer of {digits} digits is outside the 64-bit range TOML allows; give a "
                       "realistic value")
    elif isinstance(value, float):
        if not math.isfinite(value):
            out.append(f"{where}: {value} is not a usable value (NaN and infinity are refused); give a finite number")
    elif isinstance(value, dict):
        for k, v in value.items():
            _value_problems(v, f"{where}.{k}" if where else str(k), out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _value_problems(v, f"{where}.{i}", out, depth + 1)


#: a recipe is a few kilobytes; anything this large is not one (and would be parsed into memory whole)
MAX_RECIPE_BYTES = 4 * 2**20


def loads_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text as a recipe: a syntax error, an integer of thousands of digits or nesting deep enough
    to exhaust Python's recursion limit is a :class:`RecipeError`, never a traceback."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(source, [f"TOML syntax error: {exc}"]) from None
    except ValueError as exc:  # int('9' * 5000): beyond Python's integer-string limit
        raise RecipeError(source, [f"a value cannot be read ({str(exc).split(';')[0]}); give realistic numbers"]) \
            from None
    except RecursionError:
        raise RecipeError(source, ["lists or tables are nested too deeply to read; this is not a recipe"]) from None


def read_toml(source: str | Path) -> dict[str, Any]:
    src = str(source)
    try:
        with fsspec.open(src, "rb") as fh:
            data = fh.read(MAX_RECIPE_BYTES + 1)
        if len(data) > MAX_RECIPE_BYTES:
            raise RecipeError(src, [f"larger than {MAX_RECIPE_BYTES // 2**20} MiB; this is not a recipe file"])
        return loads_toml(data.decode("utf-8"), src)
    except FileNotFoundError:
        from milzoo.recipe.book import not_found_hint

        raise RecipeError(src, [f"file not found; check the path, or: {not_found_hint(src)}"]) from None
    except IsADirectoryError:
        raise RecipeError(src, ["is a directory, not a recipe file"]) from None
    except UnicodeDecodeError:
        raise RecipeError(src, ["not a UTF-8 text file"]) from None


def _validate_component(kind: str, table: ComponentTable, where: str, problems: list[str]) -> ComponentConfig | None:
    try:
        cls = registry.get_component(kind, table.name)
    except UnknownComponentError as exc:
        problems.append(f"{where}.name: {exc}")
        return None
    try:
        return cls.Config.model_validate(table.options())
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, where, list(cls.Config.model_fields)))
        return None


def validate_recipe(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """Validate a recipe dictionary; raise :class:`RecipeError` listing every problem."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise RecipeError(source, [f"(root): a recipe is a TOML table, not {type(raw).__name__}"])
    _value_problems(raw, "", problems)
    if problems:  # values that would make pydantic or torch fail with a raw overflow message
        raise RecipeError(source, problems)
    try:
        root = RecipeModel.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, model=RecipeModel))
        # still validate the component tables we can read, to report everything at once
        root = None
    components: dict[str, Any] = {"loss": []}
    tables: list[tuple[str, str, Any]] = []
    if root is not None:
        for key in ("data", "encoder", "pooling", "augment"):
            t = getattr(root, key)
            if t is not None:
                tables.append((key, key, t))
        for i, t in enumerate(root.loss):
            tables.append(("loss", f"loss.{i}", t))
    else:
        for key in ("data", "encoder", "pooling", "augment"):
            t = raw.get(key)
            if isinstance(t, dict) and isinstance(t.get("name"), str):
                tables.append((key, key, ComponentTable.model_validate(t)))
        loss = raw.get("loss")
        for i, t in enumerate(loss if isinstance(loss, list) else []):
            if isinstance(t, dict) and isinstance(t.get("name"), str):
                tables.append(("loss", f"loss.{i}", ComponentTable.model_validate(t)))
    kind_of = {"data": "dataset", "encoder": "encoder", "pooling": "pooling", "augment": "augment", "loss": "loss"}
    # a recipe.toml inside a run directory: unknown names say which recorded distribution to install
    recorded = provenance.from_recipe_source(source)
    for key, where, table in tables:
        with registry.recorded_providers(recorded):
            cfg = _validate_component(kind_of[key], table, where, problems)
        if key == "loss":
            components["loss"].append(cfg)
        else:
            components[key] = cfg
    if problems:
        raise RecipeError(source, problems)
    if "encoder" not in components:
        components["encoder"] = registry.get_component("encoder", "identity").Config()
    return Recipe(root, components, source)


def load_recipe(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    """Read (a path/URL, a shipped recipe's name or an already-parsed dict), apply overrides, validate."""
    from milzoo.recipe.book import resolve

    if isinstance(source, dict):
        raw, name = source, "<dict>"
    elif (shipped := resolve(source)) is not None:  # a shipped recipe's name (`milzoo recipes`), not a file
        raw, name = shipped.load(), shipped.origin
    else:
        raw, name = read_toml(source), str(source)
    return validate_recipe(apply_overrides(raw, overrides), name)


def suggest_key(key: str, options: list[str]) -> str | None:
    m = difflib.get_close_matches(key, options, n=1)
    return m[0] if m else None
