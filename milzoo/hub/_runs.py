"""Run directories as the source of a shared model: which checkpoints, which measured metrics, which config.

A run directory (``milzoo run --out``) holds ``recipe.toml``, ``run.json``,
``summary.json`` and ``fold-XX/{best,last}/`` checkpoints.  This module picks
the checkpoints that make up the model to share (:func:`select_checkpoints`),
the metrics ``milzoo run`` measured for exactly those weights
(:func:`run_metrics`), and builds the Hub folder's ``config.json``.  The files
are read as untrusted data (bounded size and depth, see :mod:`milzoo.untrusted`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from milzoo.checkpoint import CONFIG, read_config
from milzoo.errors import RunDirError, UserError
from milzoo.metrics import STD_DDOF, mean_std, std_words
from milzoo._untrusted import read_json
from milzoo._version import milzoo_version

ENSEMBLE_FORMAT = "milzoo-ensemble"
ENSEMBLE_FORMAT_VERSION = 1
HUB_FORMAT_VERSION = 1
README = "README.md"
RECIPE = "recipe.toml"
_BOOKKEEPING = {"epoch", "threshold", "n_models", "time_s", "loss", "fold"}


@dataclass
class Member:
    fold: int
    checkpoint: str  # "best" or "last"
    path: Path  # the checkpoint directory (config.json + model.safetensors)

    @property
    def name(self) -> str:
        return f"fold-{self.fold:02d}"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    data = read_json(path, "run directory file", RunDirError)
    if not isinstance(data, dict):
        raise RunDirError(f"{path} holds a JSON {type(data).__name__}, not an object; the run directory is damaged.")
    return data


def _fold_dirs(run_dir: Path) -> dict[int, Path]:
    out = {}
    for d in run_dir.glob("fold-*"):
        tail = d.name[len("fold-"):]
        if d.is_dir() and tail.isdigit():
            out[int(tail)] = d
    return dict(sorted(out.items()))


def is_run_dir(path: Path) -> bool:
    return (path / "recipe.toml").is_file() and bool(_fold_dirs(path))


def _read_recipe(run_dir: Path) -> dict[str, Any]:
    from milzoo.recipe._toml import read_toml

    return read_toml(run_dir / "recipe.toml")


def select_checkpoints(run_dir: str | Path, folds: Sequence[int] | None = None, checkpoint: str = "auto",
                       require_finished: bool = True) -> list[Member]:
    """The checkpoints of a run directory that make up the model to share.

    ``holdout`` runs give fold 0; ``cv`` and ``cv_ensemble`` runs give every
    fold (an ensemble) unless ``folds`` picks some (one fold gives a single
    model).  ``checkpoint="auto"`` takes ``best/`` (validation-selected) when
    the fold has one, else ``last/``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} does not exist or is not a directory; give the --out directory of `milzoo run`.")
    if not (run_dir / "recipe.toml").is_file():
        raise RunDirError(f"{run_dir} is not a milzoo run directory (no recipe.toml); give the --out directory of "
                          "`milzoo run`.")
    if checkpoint not in ("auto", "best", "last"):
        raise UserError(f"checkpoint must be 'auto', 'best' or 'last', not {checkpoint!r}.")
    available = _fold_dirs(run_dir)
    if not available:
        raise RunDirError(f"{run_dir} has no fold-XX folders yet: nothing was trained there.")
    protocol = (_read_recipe(run_dir).get("protocol") or {}).get("kind", "holdout")
    if folds:
        wanted = list(dict.fromkeys(int(f) for f in folds))
        unknown = [f for f in wanted if f not in available]
        if unknown:
            raise RunDirError(f"{run_dir} has no fold(s) {unknown}; its folds are {list(available)}.")
    elif protocol == "holdout":
        wanted = [min(available)]
    else:
        wanted = list(available)
    members = []
    for f in wanted:
        fdir = available[f]
        if require_finished and not (fdir / "result.json").exists():
            raise RunDirError(
                f"fold {f} of {run_dir} has not finished (no result.json), so its weights and metrics are not final. "
                f"Finish it with `milzoo run {run_dir / 'recipe.toml'} --out {run_dir} --resume`, or pick finished "
                "folds with --fold."
            )
        best, last = fdir / "best", fdir / "last"
        if checkpoint == "best" or (checkpoint == "auto" and (best / CONFIG).exists()):
            chosen, kind = best, "best"
        else:
            chosen, kind = last, "last"
        if not (chosen / CONFIG).exists():
            hint = " (this run has no validation split, so there is no best/ checkpoint; use last)" \
                if kind == "best" else ""
            raise RunDirError(f"{chosen} holds no checkpoint{hint}.")
        members.append(Member(f, kind, chosen))
    return members


def _metric_values(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k not in _BOOKKEEPING}


def _fold_metrics(res: dict[str, Any], kind: str) -> tuple[str, dict[str, dict[str, float]]]:
    section = "selected" if kind == "best" and "selected" in res else "last"
    block = res.get(section) or {}
    splits = {s: _metric_values(m) for s, m in block.items() if isinstance(m, dict) and s != "val"}
    return section, {s: v for s, v in splits.items() if v}


def run_metrics(run_dir: Path, members: list[Member], protocol: str) -> dict[str, Any]:
    """The metrics measured by ``milzoo run`` for exactly these weights (never the optimistic ones)."""
    results = {m.fold: _read_json(m.path.parent / "result.json") for m in members}
    summary = _read_json(run_dir / "summary.json")
    if any(r is None for r in results.values()):
        return {}
    if len(members) == 1:
        m = members[0]
        section, splits = _fold_metrics(results[m.fold], m.checkpoint)
        if not splits:
            return {}
        what = "validation-selected" if section == "selected" else "last-epoch"
        return {"source": "result.json", "splits": splits,
                "note": f"Measured by `milzoo run` on fold {m.fold} with these ({what}) weights."}
    auto_kind = lambda m: "best" if (m.path.parent / "best" / CONFIG).exists() else "last"  # noqa: E731
    n_folds = (summary or {}).get("num_folds")
    ens = ((summary or {}).get("ensemble") or {}).get("test")
    if (protocol == "cv_ensemble" and ens and n_folds == len(members)
            and all(m.checkpoint == auto_kind(m) for m in members)):
        return {"source": "summary.json", "splits": {"test": _metric_values(ens)},
                "note": ("Measured by `milzoo run` on the separate test split: accuracy and F1 of the members' "
                         "majority vote, AUC of their mean probability (exactly what this ensemble computes).")}
    per: dict[str, dict[str, list[float]]] = {}
    for m in members:
        _, splits = _fold_metrics(results[m.fold], m.checkpoint)
        for s, vals in splits.items():
            for k, v in vals.items():
                per.setdefault(s, {}).setdefault(k, []).append(v)
    # the mean and the standard deviation of summary.json (milzoo.metrics.mean_std: the sample SD, n - 1)
    stats = {s: {k: mean_std(v) for k, v in d.items() if len(v) == len(members)} for s, d in per.items()}
    splits = {s: {k: m for k, (m, _) in d.items()} for s, d in stats.items()}
    std = {s: {k: sd for k, (_, sd) in d.items()} for s, d in stats.items()}
    splits = {s: v for s, v in splits.items() if v}
    if not splits:
        return {}
    return {"source": "summary.json", "splits": splits, "std": {s: std[s] for s in splits},
            "std_ddof": STD_DDOF,
            "note": (f"Cross-validation estimate: mean ± {std_words()} over the {len(members)} member folds, "
                     "each measured by "
                     "`milzoo run` on its own held-out fold. The ensemble as a whole was not evaluated on a "
                     "separate test set.")}


def input_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    shape = [int(s) for s in cfg.get("in_shape") or []]
    kind = "features" if len(shape) == 1 else "images" if len(shape) == 3 else "instances"
    return {"in_shape": shape, "feature_dim": shape[0] if len(shape) == 1 else None, "kind": kind,
            "standardized_inside_model": bool(cfg.get("standardize", False))}


def _command(run_info: dict[str, Any] | None, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"equivalent": f"milzoo run {RECIPE} --out runs/{name}"}
    if run_info and run_info.get("command"):
        out["argv"] = run_info["command"]
    return out


def _environment(run_info: dict[str, Any] | None) -> dict[str, Any]:
    if not run_info:
        return {}
    plugins = {p.get("distribution"): p.get("version") for p in run_info.get("plugins", [])
               if p.get("status") == "ok" and p.get("distribution") not in (None, "?")}
    env = {"milzoo": run_info.get("milzoo"), "python": run_info.get("python"),
           "libraries": run_info.get("libraries", {}), "plugins": plugins, "git_sha": run_info.get("git_sha")}
    if run_info.get("machine"):  # runs from before run.json recorded the hardware have none
        env["machine"] = run_info["machine"]
    return env


def run_distributions(cfg: dict[str, Any]) -> dict[str, str]:
    return {"milzoo": cfg.get("milzoo_version") or milzoo_version(), **(cfg.get("distributions") or {})}


def hub_config_from_run(run_dir: Path, members: list[Member]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(top-level config.json, member configs) of the Hub folder for ``members`` of a run."""
    recipe = _read_recipe(run_dir)
    protocol = (recipe.get("protocol") or {}).get("kind", "holdout")
    run_info = _read_json(run_dir / "run.json")
    name = recipe.get("name", run_dir.name)
    member_cfgs = [read_config(m.path) for m in members]
    extras = {
        "hub_format_version": HUB_FORMAT_VERSION,
        "recipe": recipe,
        "metrics": run_metrics(run_dir, members, protocol),
        "command": _command(run_info, name),
        "training_environment": _environment(run_info),
    }
    if len(members) == 1:
        m = members[0]
        cfg = dict(member_cfgs[0])
        cfg.update(extras)
        cfg["input"] = input_spec(cfg)
        cfg["distributions"] = run_distributions(cfg)
        cfg["source"] = {"run_name": name, "protocol": protocol, "fold": m.fold, "checkpoint": m.checkpoint}
        return cfg, []
    return ensemble_config(member_cfgs, members, extras, {"run_name": name, "protocol": protocol}), member_cfgs


def ensemble_config(member_cfgs: list[dict[str, Any]], members: list[Member] | None,
                     extras: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    first = member_cfgs[0]
    names = [m.name for m in members] if members else [f"member-{i:02d}" for i in range(len(member_cfgs))]
    dists: dict[str, str] = {}
    for c in member_cfgs:
        dists.update(run_distributions(c))
    cfg = {
        "format": ENSEMBLE_FORMAT,
        "format_version": ENSEMBLE_FORMAT_VERSION,
        "milzoo_version": milzoo_version(),
        "ensemble": {
            "members": [f"members/{n}" for n in names],
            "folds": [m.fold for m in members] if members else list(range(len(member_cfgs))),
            "checkpoints": [m.checkpoint for m in members] if members else ["model"] * len(member_cfgs),
            "combine": "vote",
            "probabilities": "mean",
            "thresholds": [c.get("threshold") for c in member_cfgs],
        },
        **{k: first.get(k) for k in ("encoder", "pooling", "augment", "in_shape", "num_classes", "class_names",
                                     "label_names", "components")},
        "input": input_spec(first),
        "distributions": dists,
        "source": source,
        **extras,
    }
    return cfg
