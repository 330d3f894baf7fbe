"""Model cards (``README.md``) for milzoo Hub folders.

The YAML front matter is written by huggingface_hub's ``ModelCardData``
(``library_name: milzoo``, tags, licence, datasets, and the measured metrics
as ``model-index``, which the Hub renders as an evaluation widget); the body
is a Jinja2 template (huggingface_hub renders it with Jinja2, a milzoo
dependency).  Everything in the card comes from the Hub folder's
``config.json``: the card never states a number that the run did not measure.
"""

from __future__ import annotations

import json
import math
import shlex
from typing import Any

import tomli_w
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from milzoo._untrusted import valid_distribution

LIBRARY_NAME = "milzoo"
BASE_TAGS = ("milzoo", "multiple-instance-learning", "pytorch", "safetensors")

#: milzoo metric key -> (model-index metric type, readable name)
METRIC_TYPES = {
    "acc": ("accuracy", "Bag accuracy"),
    "auc": ("roc_auc", "Bag AUC"),
    "f1": ("f1", "Bag F1"),
    "inst_acc": ("accuracy", "Instance accuracy"),
}

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}
{% if description %}
{{ description }}
{% endif %}
{% if untrained_head %}
> **The classification head is untrained.** These weights were converted from a model that has no
> classification head, so a new one was initialised ({{ untrained_head }}): its class predictions mean
> nothing until the model is fine-tuned. The bag features (`out.extras["bag_feature"]`) and the attention
> are the pretrained ones.
{% endif %}
A milzoo multiple-instance-learning model: bags of
{{ input_text }} go through the `{{ encoder }}` encoder and the `{{ pooling }}` pooling to
{{ num_classes }} bag classes ({{ labels }}).
{% if ensemble %}
This repository holds an **ensemble of {{ ensemble.members | length }} models** ({{ ensemble_folds }}), stored
under `members/`. Loading returns one `Ensemble` module: its bag probabilities are the mean of
the members' probabilities, and `out.extras["vote"]` is the majority vote of the members'
predictions{% if has_thresholds %} (each member thresholded at its own validation-selected
threshold){% endif %}.
{% endif %}
## How to use

```bash
pip install milzoo {{ pip_extra }}
```

```python
import torch
import milzoo
from milzoo.datasets.batch import Bag, collate_bags

model = milzoo.load_pretrained("{{ ref }}")   # eval mode; cached for offline use
bags = [Bag(x=torch.randn(12, {{ shape_text }}), y=0), Bag(x=torch.randn(30, {{ shape_text }}), y=0)]
out = model.predict(collate_bags(bags))
print(out.bag_probs)        # [2, {{ num_classes }}] class probabilities ({{ labels }})
```
{% if input.feature_dim and recipe_data %}
The bags must be encoded exactly as in training (dataset settings: `{{ recipe_data }}`).
{% endif %}
## Evaluation
{% if results %}
{{ metrics_note }}

| split | metric | value |
|---|---|---|
{% for r in results -%}
| {{ r.split }} | {{ r.metric }} | {{ r.value }} |
{% endfor %}
{% else %}
No evaluation results were recorded for these weights.
{% endif %}
## Training

{{ source_text }}
{% if command %}
Command:

```bash
{{ command }}
```
{% endif %}
Resolved recipe (every default filled in):

```toml
{{ recipe_toml }}```

## Software

| distribution | version |
|---|---|
{% for d, v in distributions.items() -%}
| {{ d }} | {{ v }} |
{% endfor %}
Files: `config.json` (components, options, label names, input spec, recipe, metrics),
`model.safetensors`{% if ensemble %} in each `members/<fold>/` folder{% endif %}. Loading never
executes code from the repository (safetensors only, no pickle).
"""


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def eval_rows(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{split, key, metric, value}]`` from ``cfg["metrics"]`` (finite numbers only)."""
    metrics = cfg.get("metrics") or {}
    rows = []
    for split, values in (metrics.get("splits") or {}).items():
        std = ((metrics.get("std") or {}).get(split)) or {}
        for key, value in values.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            text = _fmt(value)
            if isinstance(std.get(key), (int, float)) and math.isfinite(std[key]):
                text += f" ± {_fmt(std[key])}"
            rows.append({"split": split, "key": key, "metric": METRIC_TYPES.get(key, (key, key))[1],
                         "value": text, "raw": float(value)})
    return rows


def _dataset_of(cfg: dict[str, Any]) -> str | None:
    data = (cfg.get("recipe") or {}).get("data") or {}
    if data.get("dataset"):
        return str(data["dataset"])
    return None if data.get("path") else data.get("name")


def _command_text(cfg: dict[str, Any]) -> str | None:
    cmd = cfg.get("command") or {}
    argv = cmd.get("argv")
    if isinstance(argv, list) and len(argv) > 1 and argv[1] == "run":
        return shlex.join(["milzoo", *argv[1:]])
    return cmd.get("equivalent")


def _untrained_text(cfg: dict[str, Any]) -> str:
    """The newly initialised parameters of a converted model whose head is untrained, or "" for a trained one."""
    if cfg.get("head") != "untrained":
        return ""
    conv = cfg.get("converted_from") if isinstance(cfg.get("converted_from"), dict) else {}
    names = [p for p in conv.get("untrained_parameters") or [] if isinstance(p, str) and p.isprintable()]
    return ", ".join(f"`{p}`" for p in names) or "its parameters"


def _converted_text(conv: dict[str, Any]) -> str:
    """The "Training" paragraph of weights ``milzoo convert`` brought from another toolkit."""
    def text(key: str) -> str:
        value = conv.get(key)
        return value if isinstance(value, str) and value.isprintable() else "?"

    out = (f"Not trained with milzoo: converted with `milzoo convert {text('format')}` from `{text('file')}` "
           f"(sha256 `{text('sha256')}`), a {text('architecture')} trained with {text('source')}.")
    notes = [n for n in conv.get("notes") or [] if isinstance(n, str) and n.isprintable()]
    return " ".join([out, *notes])


def build_card(
    cfg: dict[str, Any],
    repo_id: str | None = None,
    license: str | None = None,  # noqa: A002 - the Hub's field name
    tags: list[str] | tuple[str, ...] = (),
    datasets: list[str] | None = None,
    description: str | None = None,
) -> ModelCard:
    """The model card of a Hub folder whose ``config.json`` is ``cfg``."""
    recipe = cfg.get("recipe") or {}
    ensemble = cfg.get("ensemble")
    encoder = (cfg.get("encoder") or {}).get("name", "?")
    pooling = (cfg.get("pooling") or {}).get("name", "?")
    title = repo_id.split("/")[-1] if repo_id else recipe.get("name", "milzoo-model")
    dataset = _dataset_of(cfg)
    if datasets is None:
        datasets = [dataset] if dataset else []
    rows = eval_rows(cfg)
    all_tags = list(dict.fromkeys([*BASE_TAGS, "mil-pooling-" + pooling, *(["ensemble"] if ensemble else []),
                                   *tags]))
    eval_results = [
        EvalResult(
            task_type="multiple-instance-learning",
            task_name="Bag classification",
            dataset_type=dataset or "custom",
            dataset_name=dataset or "custom data (see the recipe)",
            dataset_split=r["split"],
            metric_type=METRIC_TYPES.get(r["key"], (r["key"], r["key"]))[0],
            metric_name=r["metric"],
            metric_value=round(r["raw"], 6),
        )
        for r in rows
    ]
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        tags=all_tags,
        license=license,
        datasets=datasets or None,
        model_name=title if eval_results else None,
        eval_results=eval_results or None,
    )
    inp = cfg.get("input") or {"in_shape": cfg.get("in_shape"), "feature_dim": None}
    shape = list(inp.get("in_shape") or [])
    input_text = (f"{inp['feature_dim']}-dimensional instance feature vectors" if inp.get("feature_dim")
                  else f"instances of shape {tuple(shape)}")
    # only valid distribution names reach the card's `pip install` line (config.json is data)
    dists = cfg.get("distributions") if isinstance(cfg.get("distributions"), dict) else {}
    plugins = sorted(d for d in dists if d != "milzoo" and valid_distribution(d))
    source = cfg.get("source") or {}
    if ensemble:
        source_text = (f"Run `{source.get('run_name', '?')}` (protocol `{source.get('protocol', '?')}`); members: "
                       + ", ".join(f"fold {f} ({c})" for f, c in zip(ensemble.get("folds", []),
                                                                  ensemble.get("checkpoints", []))) + ".")
    elif source:
        source_text = (f"Run `{source.get('run_name', '?')}` (protocol `{source.get('protocol', '?')}`), fold "
                       f"{source.get('fold', 0)}, {source.get('checkpoint', '?')} checkpoint"
                       + (f" (epoch {cfg['epoch']})" if cfg.get("epoch") is not None else "") + ".")
    elif isinstance(cfg.get("converted_from"), dict):
        source_text = _converted_text(cfg["converted_from"])
    else:
        source_text = "Saved from a model object (no run directory recorded)."
    metrics = cfg.get("metrics") or {}
    recipe_data = {k: v for k, v in (recipe.get("data") or {}).items() if k not in ("path",)}
    return ModelCard.from_template(
        data,
        template_str=TEMPLATE,
        title=title,
        description=description or recipe.get("description") or "",
        ensemble=ensemble,
        untrained_head=_untrained_text(cfg),
        has_thresholds=any(t is not None for t in (ensemble or {}).get("thresholds") or []),
        ensemble_folds=", ".join(f"fold {f}" for f in (ensemble or {}).get("folds", [])),
        encoder=encoder,
        pooling=pooling,
        num_classes=cfg.get("num_classes"),
        labels=", ".join(str(x) for x in (cfg.get("label_names") or [])),
        input=inp,
        input_text=input_text,
        shape_text=", ".join(str(s) for s in shape),
        recipe_data=json.dumps(recipe_data, sort_keys=True) if recipe_data else "",
        pip_extra=" ".join(plugins),
        ref=f"hf-hub:{repo_id}" if repo_id else "path/to/this/folder",
        results=rows,
        metrics_note=metrics.get("note", ""),
        source_text=source_text,
        command=_command_text(cfg),
        recipe_toml=tomli_w.dumps(recipe) if recipe else "(no recipe recorded)\n",
        distributions=cfg.get("distributions") or {},
    )


def render_card(cfg: dict[str, Any], **kwargs: Any) -> str:
    """The ``README.md`` text for ``cfg`` (see :func:`build_card`)."""
    return str(build_card(cfg, **kwargs))
