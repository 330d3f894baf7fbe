"""Sharing trained models: the Hub folder format, ``push_to_hub`` and ``load_pretrained``.

This is the only milzoo module that talks to the Hugging Face Hub.  Downloads
go through ``snapshot_download`` (the Hub client's revisioned cache), so a
model loaded once loads again offline (``HF_HUB_OFFLINE=1`` or
``local_files_only=True``).  Nothing is ever unpickled: weights are
safetensors and the model is rebuilt from ``config.json`` through the
registry (:mod:`milzoo.checkpoint` does the strict loading).

Hub folder layout (what ``milzoo export`` writes and ``milzoo push`` uploads)::

    config.json          checkpoint config (components + options, in_shape, label names,
                         distributions) plus: input spec, resolved recipe, metrics, command, source
    model.safetensors    the weights                      (single model)
    members/fold-00/     config.json + model.safetensors  (ensemble: one folder per member;
    members/fold-01/     ...                               the top-level config.json has "ensemble")
    recipe.toml          the resolved recipe that trained it
    README.md            the model card

References accepted by :func:`load_pretrained`:

- a zoo name from the pretrained index, e.g. ``"psmil-camelyon16"``;
- ``"hf-hub:org/repo"`` or ``"hf-hub:org/repo@revision"``;
- a local run directory, checkpoint directory or Hub folder (``"local-dir:PATH"`` forces this);
- an fsspec URL of such a folder (``"memory://..."``, ``"s3://..."``, ``"hf://..."``), copied to a
  temporary directory first.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from torch import nn

from milzoo import checkpoint as ckpt
from milzoo.ensemble import Ensemble
from milzoo.errors import CheckpointError, RunDirError, UserError
from milzoo.model import MILModel
from milzoo.pretrained import PretrainedEntry, UnpublishedModelError, get_pretrained
from milzoo.versions import milzoo_version

LIBRARY_NAME = "milzoo"
ENSEMBLE_FORMAT = "milzoo-ensemble"
ENSEMBLE_FORMAT_VERSION = 1
HUB_FORMAT_VERSION = 1
README = "README.md"
RECIPE = "recipe.toml"
#: the files a milzoo Hub repository holds (patterns of snapshot_download; ``*`` matches ``/``)
ALLOW_PATTERNS = ["*.json", "*.safetensors", README, RECIPE]
#: files copied from fsspec folders (run directories included; training state is skipped)
_FSSPEC_SKIP = {ckpt.STATE}
_BOOKKEEPING = {"epoch", "threshold", "n_models", "time_s", "loss", "fold"}
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


class HubError(UserError):
    """Talking to the Hugging Face Hub failed (login, network, server)."""


class HubNotFoundError(HubError):
    """The repository, revision or file does not exist on the Hub."""


class OfflineNotCachedError(HubError):
    """Offline (or the Hub unreachable) and the model is not in the local cache."""


# ============================================================================ ensemble


# ============================================================================ run directories


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
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc}); the run directory is damaged.") from None


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
    from milzoo.recipe import read_toml

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
        if checkpoint == "best" or (checkpoint == "auto" and (best / ckpt.CONFIG).exists()):
            chosen, kind = best, "best"
        else:
            chosen, kind = last, "last"
        if not (chosen / ckpt.CONFIG).exists():
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
    auto_kind = lambda m: "best" if (m.path.parent / "best" / ckpt.CONFIG).exists() else "last"  # noqa: E731
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
    splits = {s: {k: float(np.mean(v)) for k, v in d.items() if len(v) == len(members)} for s, d in per.items()}
    std = {s: {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in d.items() if len(v) == len(members)}
           for s, d in per.items()}
    splits = {s: v for s, v in splits.items() if v}
    if not splits:
        return {}
    return {"source": "summary.json", "splits": splits, "std": {s: std[s] for s in splits},
            "note": (f"Cross-validation estimate: mean ± std over the {len(members)} member folds, each measured by "
                     "`milzoo run` on its own held-out fold. The ensemble as a whole was not evaluated on a "
                     "separate test set.")}


def _input_spec(cfg: dict[str, Any]) -> dict[str, Any]:
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
    return {"milzoo": run_info.get("milzoo"), "python": run_info.get("python"),
            "libraries": run_info.get("libraries", {}), "plugins": plugins, "git_sha": run_info.get("git_sha")}


def _distributions(cfg: dict[str, Any]) -> dict[str, str]:
    return {"milzoo": cfg.get("milzoo_version") or milzoo_version(), **(cfg.get("distributions") or {})}


def _hub_config_from_run(run_dir: Path, members: list[Member]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(top-level config.json, member configs) of the Hub folder for ``members`` of a run."""
    recipe = _read_recipe(run_dir)
    protocol = (recipe.get("protocol") or {}).get("kind", "holdout")
    run_info = _read_json(run_dir / "run.json")
    name = recipe.get("name", run_dir.name)
    member_cfgs = [ckpt.read_config(m.path) for m in members]
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
        cfg["input"] = _input_spec(cfg)
        cfg["distributions"] = _distributions(cfg)
        cfg["source"] = {"run_name": name, "protocol": protocol, "fold": m.fold, "checkpoint": m.checkpoint}
        return cfg, []
    return _ensemble_config(member_cfgs, members, extras, {"run_name": name, "protocol": protocol}), member_cfgs


def _ensemble_config(member_cfgs: list[dict[str, Any]], members: list[Member] | None,
                     extras: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    first = member_cfgs[0]
    names = [m.name for m in members] if members else [f"member-{i:02d}" for i in range(len(member_cfgs))]
    dists: dict[str, str] = {}
    for c in member_cfgs:
        dists.update(_distributions(c))
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
        "input": _input_spec(first),
        "distributions": dists,
        "source": source,
        **extras,
    }
    return cfg


# ============================================================================ writing Hub folders


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(f"{out_dir} exists and is not empty; choose another folder or pass overwrite=True "
                            "(--overwrite).")
        if not (out_dir / ckpt.CONFIG).exists():
            raise UserError(f"{out_dir} is not empty and is not a milzoo Hub folder; refusing to overwrite it.")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _copy_weights(src: Path, dst: Path) -> None:
    ckpt.atomic_write_bytes(dst, src.read_bytes())


def _write_card(out_dir: Path, cfg: dict[str, Any], repo_id, license, tags, datasets, description) -> None:  # noqa: A002
    from milzoo.modelcard import render_card

    ckpt.atomic_write_text(out_dir / README, render_card(cfg, repo_id=repo_id, license=license, tags=list(tags),
                                                         datasets=datasets, description=description))


def _write_recipe(out_dir: Path, cfg: dict[str, Any]) -> None:
    import tomli_w

    if cfg.get("recipe"):
        ckpt.atomic_write_text(out_dir / RECIPE, tomli_w.dumps(cfg["recipe"]))


def save_pretrained(
    source: str | Path | MILModel | Ensemble,
    out_dir: str | Path,
    *,
    folds: Sequence[int] | None = None,
    checkpoint: str = "auto",
    repo_id: str | None = None,
    license: str | None = None,  # noqa: A002 - the Hub's field name
    tags: Sequence[str] = (),
    datasets: list[str] | None = None,
    description: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Hub folder (weights, config.json, recipe.toml, README.md) into ``out_dir``.

    ``source`` is a run directory (see :func:`select_checkpoints` for ``folds``
    and ``checkpoint``), an existing Hub folder (re-validated and copied with a
    fresh model card), or a model object (:class:`MILModel` or
    :class:`Ensemble`).  Every checkpoint is loaded once first, so a corrupt or
    mismatched one is reported here rather than after an upload.
    """
    out_dir = Path(out_dir)
    card = dict(repo_id=repo_id, license=license, tags=tags, datasets=datasets, description=description)
    if isinstance(source, (MILModel, Ensemble)):
        _prepare_out(out_dir, overwrite)
        return _save_model_object(source, out_dir, card)
    src = Path(source)
    if is_run_dir(src):
        members = select_checkpoints(src, folds, checkpoint, require_finished=True)
        for m in members:
            ckpt.load_model(m.path)  # validate: loadable, strict keys and shapes, plugins present
        cfg, member_cfgs = _hub_config_from_run(src, members)
        _prepare_out(out_dir, overwrite)
        if member_cfgs:
            for m, mcfg in zip(members, member_cfgs):
                mdir = out_dir / "members" / m.name
                mdir.mkdir(parents=True, exist_ok=True)
                _copy_weights(m.path / ckpt.WEIGHTS, mdir / ckpt.WEIGHTS)
                ckpt.atomic_write_json(mdir / ckpt.CONFIG, mcfg)
        else:
            _copy_weights(members[0].path / ckpt.WEIGHTS, out_dir / ckpt.WEIGHTS)
        ckpt.atomic_write_json(out_dir / ckpt.CONFIG, cfg)
        _write_recipe(out_dir, cfg)
        _write_card(out_dir, cfg, **card)
        return out_dir
    if (src / ckpt.CONFIG).is_file():
        if src.resolve() == out_dir.resolve():
            raise UserError(f"{src} is both the source and the destination; choose another output folder.")
        load_folder(src)  # validate
        cfg = ckpt.read_config(src)
        _prepare_out(out_dir, overwrite)
        for f in src.rglob("*"):
            rel = f.relative_to(src)
            if f.is_file() and f.name != README and any(rel.match(p) for p in ("*.json", "*.safetensors", RECIPE)) \
                    and f.name != ckpt.STATE:
                (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                _copy_weights(f, out_dir / rel)
        _write_card(out_dir, cfg, **card)
        return out_dir
    raise RunDirError(
        f"{src} is neither a milzoo run directory (recipe.toml + fold-XX/) nor a checkpoint or Hub folder "
        "(config.json + model.safetensors); give the --out directory of `milzoo run`."
    )


def _save_model_object(model: MILModel | Ensemble, out_dir: Path, card: dict[str, Any]) -> Path:
    extras = {"hub_format_version": HUB_FORMAT_VERSION, "metrics": {}}
    if isinstance(model, Ensemble):
        member_cfgs = []
        for name, (m, t) in zip(model.member_names, zip(model.members, model.thresholds)):
            mdir = out_dir / "members" / name
            ckpt.save_model(m, mdir, {"threshold": t})
            member_cfgs.append(ckpt.read_config(mdir))
        cfg = _ensemble_config(member_cfgs, None, extras, {})
        cfg["ensemble"]["members"] = [f"members/{n}" for n in model.member_names]
    else:
        ckpt.save_model(model, out_dir)
        cfg = ckpt.read_config(out_dir)
        cfg.update(extras)
        cfg["input"] = _input_spec(cfg)
        cfg["distributions"] = _distributions(cfg)
    ckpt.atomic_write_json(out_dir / ckpt.CONFIG, cfg)
    _write_card(out_dir, cfg, **card)
    return out_dir


# ============================================================================ loading folders


def _inside(folder: Path, rel: str) -> Path:
    """``folder / rel`` for a relative path that stays inside ``folder`` (config.json is data, not trusted)."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise CheckpointError(f"config.json names the member path {rel!r}, which leaves the model folder; refusing "
                              "to load it.")
    return folder / p


def _load_ensemble_folder(folder: Path, cfg: dict[str, Any], folds: Sequence[int] | None) -> nn.Module:
    ens = cfg.get("ensemble") or {}
    paths = ens.get("members") or []
    if not isinstance(paths, list) or not paths:
        raise CheckpointError(f"{folder / ckpt.CONFIG} describes an ensemble without members; it is damaged.")
    if int(cfg.get("format_version", 1)) > ENSEMBLE_FORMAT_VERSION:
        raise CheckpointError(
            f"this ensemble uses format version {cfg['format_version']}, newer than this milzoo supports "
            f"({ENSEMBLE_FORMAT_VERSION}); upgrade milzoo (`pip install -U milzoo`)."
        )
    member_folds = ens.get("folds") or list(range(len(paths)))
    thresholds = ens.get("thresholds") or [None] * len(paths)
    idx = list(range(len(paths)))
    if folds:
        missing = [f for f in folds if f not in member_folds]
        if missing:
            raise CheckpointError(f"this ensemble has no member for fold(s) {missing}; its folds are {member_folds}.")
        idx = [member_folds.index(f) for f in folds]
    models = [ckpt.load_model(_inside(folder, paths[i])) for i in idx]
    if len(models) == 1:
        return models[0]
    return Ensemble(models, [thresholds[i] for i in idx], ens.get("combine", "vote"),
                    [Path(paths[i]).name for i in idx])


def load_folder(path: str | Path, folds: Sequence[int] | None = None, checkpoint: str = "auto") -> nn.Module:
    """Load a local run directory, checkpoint directory or Hub folder (eval mode)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist or is not a directory.")
    if is_run_dir(path):
        members = select_checkpoints(path, folds, checkpoint, require_finished=False)
        models = [ckpt.load_model(m.path) for m in members]
        if len(models) == 1:
            model: nn.Module = models[0]
        else:
            thresholds = [ckpt.read_config(m.path).get("threshold") for m in members]
            model = Ensemble(models, thresholds, "vote", [m.name for m in members])
    elif (path / ckpt.CONFIG).is_file():
        cfg = ckpt.read_config(path)
        if cfg.get("format") == ENSEMBLE_FORMAT or "ensemble" in cfg:
            model = _load_ensemble_folder(path, cfg, folds)
        else:
            if folds:
                raise CheckpointError(f"{path} holds a single model; it has no folds to choose from.")
            model = ckpt.load_model(path)
    else:
        raise CheckpointError(
            f"{path} is not a milzoo model: it has no config.json (a checkpoint or Hub folder) and is not a run "
            "directory (recipe.toml + fold-XX/)."
        )
    return model.eval()


# ============================================================================ the Hub


def _check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id or ""):
        raise HubError(f"{repo_id!r} is not a Hub repository id; write it as org/name (e.g. my-org/psmil-musk1).")


def _offline(local_files_only: bool | None) -> bool:
    return bool(local_files_only) or bool(hf_constants.HF_HUB_OFFLINE)


def download(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None,
             local_files_only: bool | None = None, token: str | bool | None = None, ref: str | None = None) -> Path:
    """Fetch a milzoo repository into the Hub cache (or find it there) and return the snapshot folder."""
    _check_repo_id(repo_id)
    ref = ref or f"hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
    where = f"{repo_id}@{revision or 'main'}"
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            local_files_only=bool(local_files_only),
            token=token,
            library_name=LIBRARY_NAME,
            library_version=milzoo_version(),
            allow_patterns=ALLOW_PATTERNS,
        )
    except LocalEntryNotFoundError as exc:  # also IncompleteSnapshotError
        cache = Path(cache_dir) if cache_dir is not None else Path(hf_constants.HF_HUB_CACHE)
        if _offline(local_files_only):
            why = ("offline mode is on (HF_HUB_OFFLINE=1)" if hf_constants.HF_HUB_OFFLINE
                   else "local_files_only=True was asked")
            raise OfflineNotCachedError(
                f"cannot load {ref}: {why} and {where} is not in the Hub cache at {cache}. Download it once while "
                f"online (`milzoo pull {ref}`), point HF_HUB_CACHE at a cache that holds it, or turn offline mode off."
            ) from None
        raise OfflineNotCachedError(
            f"cannot load {ref}: the Hub could not be reached and {where} is not in the Hub cache at {cache} "
            f"({exc}). Check the network connection (or HF_ENDPOINT) and try again."
        ) from None
    except GatedRepoError:
        raise HubError(
            f"the Hub repository {repo_id} is gated: accept its conditions on https://huggingface.co/{repo_id} and log "
            "in (`hf auth login` or set HF_TOKEN), then try again."
        ) from None
    except RevisionNotFoundError:
        raise HubNotFoundError(
            f"the Hub repository {repo_id} has no revision {revision!r}; check the branch, tag or commit sha "
            f"(the commit `milzoo push` printed), or leave the revision out to get main."
        ) from None
    except RepositoryNotFoundError:
        raise HubNotFoundError(
            f"the Hub has no repository {repo_id} (or it is private and you are not logged in). Check the name "
            "(`milzoo list pretrained` shows the zoo's models); for a private repository log in with "
            "`hf auth login` or set HF_TOKEN."
        ) from None
    except EntryNotFoundError:
        raise HubNotFoundError(
            f"the Hub repository {where} lacks a file milzoo needs; it was not uploaded by `milzoo push`."
        ) from None
    except HFValidationError as exc:
        raise HubError(f"{ref} is not a valid Hub reference ({exc}).") from None
    except HfHubHTTPError as exc:
        raise HubError(f"the Hub answered an error while downloading {where}: {exc}") from None
    folder = Path(folder)
    if not (folder / ckpt.CONFIG).is_file():
        raise HubNotFoundError(
            f"the Hub repository {where} has no config.json, so it is not a milzoo model (push one with "
            "`milzoo push RUN_DIR REPO_ID`)."
        )
    return folder


def parse_ref(ref: str | Path) -> tuple[str, str, str | None]:
    """``(kind, target, revision)`` with kind one of ``zoo``, ``hf-hub``, ``local``, ``fsspec``."""
    if isinstance(ref, Path):
        return "local", str(ref), None
    s = str(ref).strip()
    if s.startswith("hf-hub:"):
        repo, _, rev = s[len("hf-hub:"):].partition("@")
        _check_repo_id(repo)
        return "hf-hub", repo, rev or None
    if s.startswith("local-dir:"):
        return "local", s[len("local-dir:"):], None
    if "://" in s:
        return "fsspec", s, None
    bare = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s) is not None
    if bare:
        from milzoo import registry
        from milzoo.errors import UnknownComponentError

        try:
            registry.get_entry("pretrained", s)
            return "zoo", s, None
        except UnknownComponentError:
            pass
    if Path(s).expanduser().exists():
        return "local", s, None
    if bare:
        return "zoo", s, None  # unknown: get_pretrained explains with suggestions
    if _REPO_ID.match(s.split("@")[0]):
        raise CheckpointError(
            f"{s!r} is not a zoo name and no such directory exists. To load the Hub repository {s.split('@')[0]}, "
            f"write 'hf-hub:{s}'; to load a folder, check the path."
        )
    raise CheckpointError(f"{s} does not exist; give a zoo name, 'hf-hub:org/name[@revision]', a folder or a URL.")


def _zoo_entry(name: str) -> PretrainedEntry:
    entry = get_pretrained(name)
    if not entry.published:
        raise UnpublishedModelError(entry.unpublished_message())
    missing = entry.missing_distributions()
    if missing:
        raise CheckpointError(
            f"the pretrained model {name!r} needs the plugin distribution(s) {', '.join(missing)}, which are not "
            f"installed. Install them with `pip install {' '.join(missing)}` and load again."
        )
    return entry


def fetch(ref: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
          local_files_only: bool | None = None, token: str | bool | None = None) -> Path:
    """Resolve a zoo name or ``hf-hub:`` reference to a local snapshot folder (downloading if needed)."""
    kind, target, ref_rev = parse_ref(ref)
    if kind == "zoo":
        entry = _zoo_entry(target)
        return download(entry.repo_id, revision or entry.revision, cache_dir, local_files_only, token,
                        ref=str(ref))
    if kind == "hf-hub":
        if ref_rev and revision and ref_rev != revision:
            raise UserError(f"{ref} names revision {ref_rev!r} but revision={revision!r} was also given; give one.")
        return download(target, revision or ref_rev, cache_dir, local_files_only, token, ref=str(ref))
    raise UserError(f"{ref} is a {kind} reference; only zoo names and hf-hub: references are fetched from the Hub.")


def _copy_from_fsspec(url: str, dest: Path) -> Path:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url)
        if not fs.isdir(root):
            raise CheckpointError(f"{url} is not a folder; give the URL of a Hub folder, checkpoint or run directory.")
        files = [f for f in fs.find(root) if not f.endswith("/")]
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any backend error
        raise CheckpointError(f"cannot read {url} ({type(exc).__name__}: {exc}); check the URL and credentials.") \
            from None
    root_s = root.rstrip("/")
    copied = 0
    for f in files:
        rel = f[len(root_s):].lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        if not rel or name in _FSSPEC_SKIP or not (name.endswith((".json", ".safetensors")) or name == RECIPE):
            continue
        target = _inside(dest, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fs.cat_file(f))
        copied += 1
    if not copied:
        raise CheckpointError(f"{url} holds no milzoo model files (config.json, model.safetensors).")
    return dest


def load_pretrained(
    ref: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    fold: int | Sequence[int] | None = None,
    checkpoint: str = "auto",
) -> nn.Module:
    """Load a trained model, ready to predict on bags (eval mode).

    ``ref`` is a zoo name (``milzoo list pretrained``), ``hf-hub:org/repo[@revision]``,
    a local run directory / checkpoint / Hub folder, or an fsspec URL of one.
    Hub downloads use the Hub client's cache (``cache_dir``, default
    ``HF_HUB_CACHE``); offline (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``)
    models load from that cache.  A multi-fold run or ensemble folder loads as
    an :class:`Ensemble`; ``fold`` picks members instead (one fold gives a
    plain :class:`MILModel`).  ``checkpoint`` (``auto``/``best``/``last``)
    applies to run directories.
    """
    folds = [fold] if isinstance(fold, int) else (list(fold) if fold is not None else None)
    kind, target, _ = parse_ref(ref)
    if kind in ("zoo", "hf-hub"):
        folder = fetch(ref, revision, cache_dir, local_files_only, token)
        return load_folder(folder, folds)
    if revision is not None:
        raise UserError(f"revision={revision!r} only applies to zoo names and hf-hub: references, not to {ref}.")
    if kind == "fsspec":
        with tempfile.TemporaryDirectory(prefix="milzoo-load-") as tmp:
            local = _copy_from_fsspec(target, Path(tmp))
            return load_folder(local, folds, checkpoint)  # weights are in memory once loaded
    return load_folder(target, folds, checkpoint)


def push_to_hub(
    run_dir: str | Path,
    repo_id: str,
    revision: str | None = None,
    private: bool = False,
    create_pr: bool = False,
    token: str | bool | None = None,
    commit_message: str | None = None,
    folds: Sequence[int] | None = None,
    checkpoint: str = "auto",
    license: str | None = None,  # noqa: A002
    tags: Sequence[str] = (),
    datasets: list[str] | None = None,
):
    """Upload a run (or Hub folder) to ``repo_id`` in one commit; returns the Hub's ``CommitInfo``.

    The repository is created when missing (``private`` applies then), and
    ``revision`` names the branch to commit to (created from main when
    missing).  ``create_pr`` opens a pull request instead of committing.
    Pin ``CommitInfo.oid`` as the ``revision`` of a pretrained entry.
    """
    _check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="milzoo-push-") as tmp:
        folder = save_pretrained(run_dir, Path(tmp) / "hub", folds=folds, checkpoint=checkpoint, repo_id=repo_id,
                                 license=license, tags=tags, datasets=datasets)
        api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=milzoo_version())
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                commit_message=commit_message or f"Upload {Path(run_dir).name} with milzoo {milzoo_version()}",
                revision=revision,
                create_pr=create_pr,
            )
        except HFValidationError as exc:
            raise HubError(f"{repo_id!r} is not a valid Hub repository id ({exc}).") from None
        except RevisionNotFoundError:
            raise HubNotFoundError(f"the repository {repo_id} has no branch {revision!r} to commit to.") from None
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status in (401, 403):
                raise HubError(
                    f"the Hub refused the upload to {repo_id} ({status}): log in with a token that can write there "
                    "(`hf auth login`, or set HF_TOKEN), or push to your own namespace."
                ) from None
            raise HubError(f"the upload to {repo_id} failed: {exc}") from None
        except OSError as exc:
            raise HubError(f"the upload to {repo_id} failed ({type(exc).__name__}: {exc}); check the network "
                           "connection and try again.") from None
