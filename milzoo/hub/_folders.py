"""Hub folders: writing them (``save_pretrained``, ``milzoo export``) and loading them (``load_folder``).

Layout: ``config.json`` + ``model.safetensors`` (one model) or ``members/<name>/``
folders (an ensemble; the top-level config.json has ``"ensemble"``), plus
``recipe.toml`` and the model card ``README.md``.  Loading never unpickles and
never trusts config.json: member paths must stay inside the folder, and every
member goes through the checks of :mod:`milzoo.checkpoint` (``_verify``).
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from milzoo._atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from milzoo.checkpoint import CONFIG, STATE, WEIGHTS, load_model, read_config, save_model
from milzoo.model.ensemble import MAX_MEMBERS, Ensemble
from milzoo.model.sizing import MAX_LOAD_BYTES, bytes_text
from milzoo.errors import CheckpointError, CheckpointWarning, RunDirError, UserError
from milzoo.hub._runs import (
    ENSEMBLE_FORMAT,
    ENSEMBLE_FORMAT_VERSION,
    HUB_FORMAT_VERSION,
    README,
    RECIPE,
    run_distributions,
    ensemble_config,
    hub_config_from_run,
    input_spec,
    is_run_dir,
    select_checkpoints,
)
from milzoo.model.mil import MILModel
from milzoo._untrusted import shown


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(f"{out_dir} exists and is not empty; choose another folder or pass overwrite=True "
                            "(--overwrite).")
        if not (out_dir / CONFIG).exists():
            raise UserError(f"{out_dir} is not empty and is not a milzoo Hub folder; refusing to overwrite it.")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _copy_weights(src: Path, dst: Path) -> None:
    atomic_write_bytes(dst, src.read_bytes())


def _write_card(out_dir: Path, cfg: dict[str, Any], repo_id, license, tags, datasets, description) -> None:  # noqa: A002
    from milzoo.hub.modelcard import render_card

    atomic_write_text(out_dir / README, render_card(cfg, repo_id=repo_id, license=license, tags=list(tags),
                                                         datasets=datasets, description=description))


def _write_recipe(out_dir: Path, cfg: dict[str, Any]) -> None:
    import tomli_w

    if cfg.get("recipe"):
        atomic_write_text(out_dir / RECIPE, tomli_w.dumps(cfg["recipe"]))


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
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write a Hub folder (weights, config.json, recipe.toml, README.md) into ``out_dir``.

    ``source`` is a run directory (see :func:`select_checkpoints` for ``folds``
    and ``checkpoint``), an existing Hub folder (re-validated and copied with a
    fresh model card), or a model object (:class:`MILModel` or
    :class:`Ensemble`).  Every checkpoint is loaded once first, so a corrupt or
    mismatched one is reported here rather than after an upload.
    ``extra_config`` (model objects only) adds keys to ``config.json``: ``milzoo convert`` records there where
    converted weights came from (``converted_from``) and whether the head is trained.
    """
    out_dir = Path(out_dir)
    card = dict(repo_id=repo_id, license=license, tags=tags, datasets=datasets, description=description)
    if isinstance(source, (MILModel, Ensemble)):
        if folds is not None or checkpoint != "auto":
            raise UserError("folds= and checkpoint= choose what to share from a run directory; a model object is "
                            "shared as it is (pick an ensemble's members when loading it, with fold=).")
        _prepare_out(out_dir, overwrite)
        return _save_model_object(source, out_dir, card, extra_config)
    if extra_config:
        raise ValueError("extra_config applies to a model object only; a run directory or Hub folder records its own")
    src = Path(source)
    if is_run_dir(src):
        members = select_checkpoints(src, folds, checkpoint, require_finished=True)
        for m in members:
            load_model(m.path)  # validate: loadable, strict keys and shapes, plugins present
        cfg, member_cfgs = hub_config_from_run(src, members)
        _prepare_out(out_dir, overwrite)
        if member_cfgs:
            for m, mcfg in zip(members, member_cfgs):
                mdir = out_dir / "members" / m.name
                mdir.mkdir(parents=True, exist_ok=True)
                _copy_weights(m.path / WEIGHTS, mdir / WEIGHTS)
                atomic_write_json(mdir / CONFIG, mcfg)
        else:
            _copy_weights(members[0].path / WEIGHTS, out_dir / WEIGHTS)
        atomic_write_json(out_dir / CONFIG, cfg)
        _write_recipe(out_dir, cfg)
        _write_card(out_dir, cfg, **card)
        return out_dir
    if (src / CONFIG).is_file():
        if src.resolve() == out_dir.resolve():
            raise UserError(f"{src} is both the source and the destination; choose another output folder.")
        load_folder(src)  # validate
        cfg = read_config(src)
        _prepare_out(out_dir, overwrite)
        for f in src.rglob("*"):
            rel = f.relative_to(src)
            if f.is_file() and f.name != README and any(rel.match(p) for p in ("*.json", "*.safetensors", RECIPE)) \
                    and f.name != STATE:
                (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                _copy_weights(f, out_dir / rel)
        _write_card(out_dir, cfg, **card)
        return out_dir
    raise RunDirError(
        f"{src} is neither a milzoo run directory (recipe.toml + fold-XX/) nor a checkpoint or Hub folder "
        "(config.json + model.safetensors); give the --out directory of `milzoo run`."
    )


def _save_model_object(model: MILModel | Ensemble, out_dir: Path, card: dict[str, Any],
                        extra_config: dict[str, Any] | None = None) -> Path:
    extras = {"hub_format_version": HUB_FORMAT_VERSION, "metrics": {}, **(extra_config or {})}
    if isinstance(model, Ensemble):
        member_cfgs = []
        for name, (m, t) in zip(model.member_names, zip(model.members, model.thresholds)):
            mdir = out_dir / "members" / name
            save_model(m, mdir, {"threshold": t})
            member_cfgs.append(read_config(mdir))
        cfg = ensemble_config(member_cfgs, None, extras, {})
        cfg["ensemble"]["members"] = [f"members/{n}" for n in model.member_names]
    else:
        threshold = model.decision_threshold  # a loaded model's recorded validation threshold travels along
        save_model(model, out_dir, {"threshold": threshold} if threshold is not None else None)
        cfg = read_config(out_dir)
        cfg.update(extras)
        cfg["input"] = input_spec(cfg)
        cfg["distributions"] = run_distributions(cfg)
    atomic_write_json(out_dir / CONFIG, cfg)
    _write_card(out_dir, cfg, **card)
    return out_dir


def inside_folder(folder: Path, rel: str) -> Path:
    """``folder / rel`` for a relative path that stays inside ``folder`` (config.json is data, not trusted)."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise CheckpointError(f"config.json names the member path {rel!r}, which leaves the model folder; refusing "
                              "to load it.")
    return folder / p


def _load_ensemble_folder(folder: Path, cfg: dict[str, Any], folds: Sequence[int] | None,
                          max_bytes: int | None = None) -> nn.Module:
    ens = cfg.get("ensemble")
    paths = ens.get("members") if isinstance(ens, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise CheckpointError(f"{folder / CONFIG} describes an ensemble without a list of member folders "
                              f"(got {shown(paths)}); it is damaged.")
    check_member_count(len(paths), f"{folder / CONFIG}")
    version = cfg.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{folder / CONFIG} has format_version {shown(version)}, not a number; it is "
                              "damaged.")
    member_folds, thresholds = ens.get("folds"), ens.get("thresholds")
    if member_folds is not None and (not isinstance(member_folds, list) or len(member_folds) != len(paths)):
        raise CheckpointError(f"{folder / CONFIG}: ensemble.folds must list one fold per member; it is damaged.")
    if thresholds is not None and (not isinstance(thresholds, list) or len(thresholds) != len(paths)):
        raise CheckpointError(f"{folder / CONFIG}: ensemble.thresholds must list one value per member; it is "
                              "damaged.")
    if version > ENSEMBLE_FORMAT_VERSION:
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
    chosen = check_members([inside_folder(folder, paths[i]) for i in idx], f"{folder / CONFIG}", max_bytes)
    models = [load_model(p, max_bytes) for p in chosen]
    if len(models) == 1:
        return models[0]
    return Ensemble(models, [thresholds[i] for i in idx], ens.get("combine", "vote"),
                    [Path(paths[i]).name for i in idx])


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_member_count(count: int, where: str) -> None:
    if count > MAX_MEMBERS:
        raise CheckpointError(
            f"{where} lists {count:,} ensemble members, more than the {MAX_MEMBERS} an ensemble may have (one per "
            "fold of a cross-validation); it is damaged or hostile, so none is loaded."
        )


def check_members(members: list[Path], where: str, max_bytes: int | None = None) -> list[Path]:
    """The member folders of an ensemble, checked before any is loaded: at most :data:`MAX_MEMBERS`, no folder
    twice (also through links), no two with the same weights, and at most ``max_bytes`` of weights together."""
    limit = MAX_LOAD_BYTES if max_bytes is None else int(max_bytes)
    check_member_count(len(members), where)
    seen: dict[Path, int] = {}
    for i, m in enumerate(members):
        real = m.resolve()
        if real in seen:
            raise CheckpointError(
                f"{where} lists the member folder {m.name!r} twice (members {seen[real]} and {i}); an ensemble of "
                "copies of one model is not an ensemble, so none is loaded. The folder is damaged or was edited."
            )
        seen[real] = i
    sizes = [(m / WEIGHTS).stat().st_size if (m / WEIGHTS).is_file() else 0 for m in members]
    if sum(sizes) > limit:
        raise CheckpointError(
            f"the {len(members)} members {where} lists hold {bytes_text(sum(sizes))} of weights together, more than "
            f"the {bytes_text(limit)} milzoo loads from a model folder unless told otherwise; nothing was read. If "
            "you trust it, load it with a larger limit (load_pretrained(..., max_bytes=...))."
        )
    by_size: dict[int, list[int]] = {}
    for i, size in enumerate(sizes):
        if size:
            by_size.setdefault(size, []).append(i)
    for same in (group for group in by_size.values() if len(group) > 1):
        digests: dict[str, int] = {}
        for i in same:
            d = _digest(members[i] / WEIGHTS)
            if d in digests:
                first = digests[d]
                raise CheckpointError(
                    f"{where} lists members {first} ({members[first].name}) and {i} ({members[i].name}) whose "
                    f"{WEIGHTS} are the same file; an ensemble of copies of one model is not an ensemble, so none is "
                    "loaded. The folder is damaged or was edited."
                )
            digests[d] = i
    return members


def untrained_head_text(path: Path, cfg: dict[str, Any]) -> str:
    """What a converted model whose classification head was newly initialised (``"head": "untrained"``) is good for."""
    source = cfg.get("converted_from") if isinstance(cfg.get("converted_from"), dict) else {}
    fmt = source.get("format")
    origin = f"converted from {shown(fmt)} weights that have" if isinstance(fmt, str) else "converted from weights with"
    return (f"{path} was {origin} no classification head: its head is newly initialised and untrained, so its class "
            "predictions mean nothing until it is fine-tuned. Its bag features (out.extras['bag_feature']) and "
            "attention are the pretrained ones.")


def load_folder(path: str | Path, folds: Sequence[int] | None = None, checkpoint: str = "auto",
                max_bytes: int | None = None) -> nn.Module:
    """Load a local run directory, checkpoint directory or Hub folder (eval mode).

    ``max_bytes`` bounds the weights of the model, or of all ensemble members together (default
    :data:`~milzoo.model.sizing.MAX_LOAD_BYTES`); an ensemble has at most :data:`~milzoo.model.ensemble.MAX_MEMBERS`
    members, each a different model.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist or is not a directory.")
    if is_run_dir(path):
        members = select_checkpoints(path, folds, checkpoint, require_finished=False)
        check_members([m.path for m in members], f"the run directory {path}", max_bytes)
        models = [load_model(m.path, max_bytes) for m in members]
        if len(models) == 1:
            model: nn.Module = models[0]
        else:
            thresholds = [read_config(m.path).get("threshold") for m in members]
            model = Ensemble(models, thresholds, "vote", [m.name for m in members])
    elif (path / CONFIG).is_file():
        cfg = read_config(path)
        if cfg.get("format") == ENSEMBLE_FORMAT or "ensemble" in cfg:
            model = _load_ensemble_folder(path, cfg, folds, max_bytes)
        else:
            if folds:
                raise CheckpointError(f"{path} holds a single model; it has no folds to choose from.")
            model = load_model(path, max_bytes)
            if cfg.get("head") == "untrained":
                warnings.warn(untrained_head_text(path, cfg), CheckpointWarning, stacklevel=2)
    else:
        raise CheckpointError(
            f"{path} is not a milzoo model: it has no config.json (a checkpoint or Hub folder) and is not a run "
            "directory (recipe.toml + fold-XX/)."
        )
    return model.eval()
