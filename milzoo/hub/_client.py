"""Sharing trained models on the Hub: ``download``, ``fetch``, ``load_pretrained`` and ``push_to_hub``.

This is the only milzoo module that talks to the Hugging Face Hub.  Run
directories are read by :mod:`milzoo.hub_runs`; Hub folders are written and
loaded by :mod:`milzoo.hub_folders` (both re-exported here).  Downloads
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
- ``"org/repo[@revision]"``, as Hugging Face users type it: a Hub repository when no zoo name and no local
  path has that name (the precedence is zoo name, existing path, Hub id; :func:`parse_ref`);
- an fsspec URL of such a folder (``"memory://..."``, ``"s3://..."``, ``"hf://..."``), copied to a
  temporary directory first.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Sequence

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

from milzoo.checkpoint import CONFIG, STATE
from milzoo.model.ensemble import Ensemble
from milzoo.model.mil import MILModel
from milzoo.errors import CheckpointError, HubError, HubNotFoundError, OfflineNotCachedError, UserError
from milzoo.hub._folders import inside_folder, load_folder, save_pretrained
from milzoo.hub._runs import (
    ENSEMBLE_FORMAT,
    ENSEMBLE_FORMAT_VERSION,
    HUB_FORMAT_VERSION,
    README,
    RECIPE,
    Member,
    is_run_dir,
    run_metrics,
    select_checkpoints,
)
from milzoo.hub.pretrained import PretrainedEntry, UnpublishedModelError, get_pretrained
from milzoo._version import milzoo_version

__all__ = [
    "ALLOW_PATTERNS", "ENSEMBLE_FORMAT", "ENSEMBLE_FORMAT_VERSION", "HUB_FORMAT_VERSION", "LIBRARY_NAME", "README",
    "RECIPE", "Ensemble", "HubError", "HubNotFoundError", "Member", "OfflineNotCachedError", "download", "fetch",
    "is_run_dir", "load_folder", "load_pretrained", "parse_ref", "push_to_hub", "run_metrics", "save_pretrained",
    "select_checkpoints",
]

LIBRARY_NAME = "milzoo"
#: the files a milzoo Hub repository holds (patterns of snapshot_download; ``*`` matches ``/``)
ALLOW_PATTERNS = ["*.json", "*.safetensors", README, RECIPE]
#: files copied from fsspec folders (run directories included; training state is skipped)
_FSSPEC_SKIP = {STATE}
log = logging.getLogger(__name__)
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


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
            f"({exc}). Check the network connection (or HF_ENDPOINT) and try again; for a machine without a "
            f"network, run `milzoo pull {ref}` on one that has it and copy its Hub cache (HF_HUB_CACHE) here."
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
    if not (folder / CONFIG).is_file():
        raise HubNotFoundError(
            f"the Hub repository {where} has no config.json, so it is not a milzoo model (push one with "
            "`milzoo push RUN_DIR REPO_ID`)."
        )
    return folder


def parse_ref(ref: str | Path) -> tuple[str, str, str | None]:
    """``(kind, target, revision)`` with kind one of ``zoo``, ``hf-hub``, ``local``, ``fsspec``.

    ``hf-hub:``, ``local-dir:`` and ``scheme://`` say what they are.  Otherwise the precedence is: a registered
    zoo name (no ``/``), then an existing local path, then ``org/name[@revision]`` as a Hub repository id, as
    Hugging Face reads it.  A path that does not exist and cannot be a Hub id (``./org/name``, ``a/b/c``) is an
    error; ``local-dir:PATH`` never goes to the Hub.
    """
    if isinstance(ref, Path):
        return "local", str(ref), None
    s = str(ref).strip()
    if s.startswith("hf-hub:"):
        repo, at, rev = s[len("hf-hub:"):].partition("@")
        _check_repo_id(repo)
        if at and (not rev or "@" in rev or rev != rev.strip()):  # "org/name@" must not quietly mean main
            what = "names no revision after '@'" if not rev.strip() else f"has the revision {rev!r}, which is not one"
            raise HubError(f"{s!r} {what}; write hf-hub:{repo}@REVISION (a branch, a tag or a commit sha), or "
                           f"hf-hub:{repo} for main.")
        return "hf-hub", repo, rev or None
    if s.startswith("local-dir:"):
        return "local", s[len("local-dir:"):], None
    if "://" in s:
        return "fsspec", s, None
    bare = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s) is not None
    if bare:
        from milzoo.registry import _table as registry
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
    repo, at, rev = s.partition("@")
    if "/" in repo and _REPO_ID.match(repo):  # org/name: what Hugging Face users type for a Hub repository
        return parse_ref(f"hf-hub:{s}")
    raise CheckpointError(
        f"{s} does not exist; give a zoo name, an existing folder, a Hub repository (org/name or "
        "hf-hub:org/name, with @revision if needed) or a URL. A path that starts with ./, / or ~, or has more than "
        "one /, is always a folder and never goes to the Hub."
    )


def _zoo_entry(name: str) -> PretrainedEntry:
    entry = get_pretrained(name)
    if not entry.loadable:
        raise UnpublishedModelError(entry.unpublished_message())
    missing = entry.missing_distributions()
    if missing:
        raise CheckpointError(
            f"the pretrained model {name!r} needs the plugin distribution(s) {', '.join(missing)}, which are not "
            f"installed. Install them with `pip install {' '.join(missing)}` and load again."
        )
    return entry


def _zoo_folder(entry: PretrainedEntry, ref: str, revision: str | None, cache_dir, local_files_only,
                token) -> Path:
    """A zoo entry's folder, in the documented order: the installed package's folder (unless another revision
    is asked for), then the Hub cache at the pinned revision, then the Hub."""
    folder = entry.package_folder()
    if folder is not None and revision in (None, entry.revision):
        log.debug("%s: loading from the installed package (%s)", entry.name, folder)
        return folder
    if not entry.published:
        raise UnpublishedModelError(
            f"the pretrained model {entry.name!r} ships only inside its package ({entry.package}) and has no "
            f"published Hub revision, so revision={revision!r} cannot be loaded; leave the revision out.")
    rev = revision or entry.revision
    if not _offline(local_files_only):
        try:  # the cache first: a pinned commit that is cached needs no network at all
            return download(entry.repo_id, rev, cache_dir, True, token, ref=ref)
        except OfflineNotCachedError:
            pass
    return download(entry.repo_id, rev, cache_dir, local_files_only, token, ref=ref)


def fetch(ref: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
          local_files_only: bool | None = None, token: str | bool | None = None) -> Path:
    """Resolve a zoo name or ``hf-hub:`` reference to a local snapshot folder (downloading if needed)."""
    if revision is not None and not str(revision).strip():  # revision="" must not quietly mean the default
        raise HubError(f"the revision given for {ref} is empty; give a branch, a tag or a commit sha, or leave it "
                       "out for the default.")
    kind, target, ref_rev = parse_ref(ref)
    if kind == "zoo":
        return _zoo_folder(_zoo_entry(target), str(ref), revision, cache_dir, local_files_only, token)
    if kind == "hf-hub":
        if ref_rev and revision and ref_rev != revision:
            raise UserError(f"{ref} names revision {ref_rev!r} but revision={revision!r} was also given; give one.")
        if str(ref).strip().startswith("hf-hub:"):
            return download(target, revision or ref_rev, cache_dir, local_files_only, token, ref=str(ref))
        try:  # a bare org/name: say why it went to the Hub, for whoever meant a folder
            return download(target, revision or ref_rev, cache_dir, local_files_only, token, ref=f"hf-hub:{ref}")
        except HubError as exc:
            raise type(exc)(f"{exc} ({ref} was read as the Hub repository {target} because no folder of that name "
                            f"exists here; for a folder, check the path.)") from None
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
        target = inside_folder(dest, rel)
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
    max_bytes: int | None = None,
) -> nn.Module:
    """Load a trained model, ready to predict on bags (eval mode).

    ``ref`` is a zoo name (``milzoo list pretrained``), a local run directory / checkpoint / Hub folder,
    ``org/repo[@revision]`` or ``hf-hub:org/repo[@revision]``, or an fsspec URL of a folder (a bare
    ``org/repo`` is a Hub id only when no zoo name and no local path has that name; :func:`parse_ref`).
    Hub downloads use the Hub client's cache (``cache_dir``, default
    ``HF_HUB_CACHE``); offline (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``)
    models load from that cache.  A multi-fold run or ensemble folder loads as
    an :class:`Ensemble`; ``fold`` picks members instead (one fold gives a
    plain :class:`MILModel`).  ``checkpoint`` (``auto``/``best``/``last``)
    applies to run directories.  ``max_bytes`` raises the limit on the weights
    milzoo loads from a folder (4 GiB; docs/security.md) for a model you trust.
    """
    folds = [fold] if isinstance(fold, int) else (list(fold) if fold is not None else None)
    kind, target, _ = parse_ref(ref)
    if kind in ("zoo", "hf-hub"):
        folder = fetch(ref, revision, cache_dir, local_files_only, token)
        return load_folder(folder, folds, max_bytes=max_bytes)
    if revision is not None:
        raise UserError(f"revision={revision!r} only applies to zoo names and hf-hub: references, not to {ref}.")
    if kind == "fsspec":
        with tempfile.TemporaryDirectory(prefix="milzoo-load-") as tmp:
            local = _copy_from_fsspec(target, Path(tmp))
            return load_folder(local, folds, checkpoint, max_bytes)  # weights are in memory once loaded
    return load_folder(target, folds, checkpoint, max_bytes)


def _what(source) -> str:
    """What a push uploads, for its default commit message."""
    if isinstance(source, Ensemble):
        return f"an ensemble of {len(source.members)} models"
    return "a model" if isinstance(source, MILModel) else Path(source).name


def push_to_hub(
    run_dir: str | Path | MILModel | Ensemble,
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
    """Upload a run, a Hub folder or a model object (:class:`MILModel`, :class:`Ensemble`) to ``repo_id`` in one
    commit; returns the Hub's ``CommitInfo``.

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
                commit_message=commit_message or f"Upload {_what(run_dir)} with milzoo {milzoo_version()}",
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
