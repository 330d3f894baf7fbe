"""``save_pretrained``, ``from_pretrained`` and ``push_to_hub`` on the model classes, as Hugging Face users know them.

The methods are those of ``huggingface_hub``'s ``ModelHubMixin`` (``model.save_pretrained(dir)``,
``MILModel.from_pretrained(ref)``, ``model.push_to_hub("org/name")``), but the work is not done here: saving a
Hub folder, loading one through the strict safetensors path and uploading belong to :mod:`milzoo.hub`, which sits
*above* this package (it builds and inspects models).  Importing it from here would be an import circle.

So the dependency is inverted: this module defines the contract (:class:`ModelSharing`, three callables) and
asks the plugin manager for its implementation through the ``milzoo_model_sharing`` hook
(:mod:`milzoo.registry.hookspecs`).  milzoo's built-ins (:mod:`milzoo.builtin`, registered like any plugin
when the plugin manager starts) implement it with :func:`milzoo.hub.save_pretrained`,
:func:`milzoo.hub.load_pretrained` and :func:`milzoo.hub.push_to_hub`; the methods therefore work whether or not
the user ever imported :mod:`milzoo.hub`.  Only the built-ins' implementation is used: a plugin cannot replace
how models are loaded (docs/security.md), and one that tries is named in a log warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milzoo.errors import CheckpointError, MilzooError

log = logging.getLogger(__name__)

#: the plugin whose ``milzoo_model_sharing`` is used: milzoo's built-ins (``milzoo.registry.DEFAULT_PLUGINS``)
BUILTIN_PLUGIN = "milzoo.builtin"


@dataclass(frozen=True)
class ModelSharing:
    """What the ``milzoo_model_sharing`` hook returns: how a model is saved, loaded and pushed.

    - ``save(model, out_dir, **options) -> Path``: write a Hub folder (:func:`milzoo.hub.save_pretrained`);
    - ``load(ref, **options) -> nn.Module``: load a model from a zoo name, Hub reference or folder
      (:func:`milzoo.hub.load_pretrained`), in eval mode;
    - ``push(model, repo_id, **options)``: upload it, returning the Hub's ``CommitInfo``
      (:func:`milzoo.hub.push_to_hub`).
    """

    save: Callable[..., Path]
    load: Callable[..., Any]
    push: Callable[..., Any]


_warned: set[str] = set()


def model_sharing() -> ModelSharing:
    """The implementation the built-ins registered (the plugin manager is started if it was not)."""
    from milzoo.registry._manager import get_plugin_manager

    impls = get_plugin_manager().hook.milzoo_model_sharing.get_hookimpls()
    others = sorted(i.plugin_name for i in impls if i.plugin_name != BUILTIN_PLUGIN)
    for name in others:
        if name not in _warned:
            _warned.add(name)
            log.warning("the plugin %s implements milzoo_model_sharing; it is ignored: models are saved, loaded and "
                        "pushed by milzoo's own code only (docs/security.md)", name)
    ours = [i for i in impls if i.plugin_name == BUILTIN_PLUGIN]
    if not ours:
        raise MilzooError("milzoo's built-in plugin (milzoo.builtin) is not registered with the plugin manager, so "
                          "models cannot be saved or loaded; something unregistered it (milzoo.registry."
                          "reset_plugins() starts the plugin manager afresh).")
    sharing = ours[0].function()
    if not isinstance(sharing, ModelSharing):  # pragma: no cover - the built-ins return one
        raise MilzooError(f"milzoo.builtin's milzoo_model_sharing returned {type(sharing).__name__}, not a "
                          "ModelSharing; the installation is broken (reinstall milzoo).")
    return sharing


class SavesPretrained:
    """``save_pretrained``, ``from_pretrained`` and ``push_to_hub``, shared by :class:`~milzoo.model.MILModel` and
    :class:`~milzoo.model.Ensemble`.

    A class states what :meth:`from_pretrained` may return with :meth:`_loaded_as` (a plain model or an
    ensemble); everything else goes through :func:`model_sharing`.
    """

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        overwrite: bool = False,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        license: str | None = None,  # noqa: A002 - the Hub's field name
        tags: Sequence[str] = (),
        datasets: list[str] | None = None,
        description: str | None = None,
        **push_options: Any,
    ):
        """Write this model as a Hub folder (``config.json``, ``model.safetensors`` or ``members/``, ``README.md``)
        into ``save_directory``; returns the folder.

        This is :func:`milzoo.save_pretrained` (``milzoo export``): safetensors only, and a folder that is not
        empty is refused unless ``overwrite=True`` (then it must be a milzoo folder).  ``repo_id``, ``license``,
        ``tags``, ``datasets`` and ``description`` go into the model card.  With ``push_to_hub=True`` (and
        ``repo_id``) the folder is also uploaded, as :meth:`push_to_hub` does, with ``push_options``
        (``revision``, ``private``, ``create_pr``, ``token``, ``commit_message``), and the Hub's ``CommitInfo`` is
        returned instead, as ``ModelHubMixin`` does.
        """
        if push_options and not push_to_hub:
            raise TypeError(f"save_pretrained() got unexpected keyword argument(s) {sorted(push_options)}; "
                            "they are options of the upload (push_to_hub=True)")
        if push_to_hub and not repo_id:
            raise CheckpointError("save_pretrained(..., push_to_hub=True) needs repo_id='org/name': the Hub "
                                  "repository to upload to.")
        sharing = model_sharing()
        folder = sharing.save(self, save_directory, overwrite=overwrite, repo_id=repo_id, license=license,
                              tags=tags, datasets=datasets, description=description)
        if not push_to_hub:
            return folder
        return sharing.push(folder, repo_id, license=license, tags=tags, datasets=datasets, **push_options)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool = False,
        create_pr: bool = False,
        token: str | bool | None = None,
        commit_message: str | None = None,
        license: str | None = None,  # noqa: A002
        tags: Sequence[str] = (),
        datasets: list[str] | None = None,
    ):
        """Upload this model to the Hub repository ``repo_id`` (``org/name``) in one commit; returns the Hub's
        ``CommitInfo`` (``info.oid`` is the commit to pin).

        This is :func:`milzoo.push_to_hub` with the model in place of a run directory: the Hub folder is written
        to a temporary directory and uploaded.  The repository is created when missing (``private`` applies
        then); ``revision`` names the branch (created from main when missing); ``create_pr`` opens a pull
        request instead of committing.
        """
        return model_sharing().push(self, repo_id, revision=revision, private=private, create_pr=create_pr,
                                    token=token, commit_message=commit_message, license=license, tags=tags,
                                    datasets=datasets)

    @classmethod
    def from_pretrained(
        cls,
        ref: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        fold: int | Sequence[int] | None = None,
        checkpoint: str = "auto",
        max_bytes: int | None = None,
    ):
        """Load a trained model (eval mode) through the strict, safetensors-only path of
        :func:`milzoo.load_pretrained`, which takes the same arguments.

        ``ref`` is a zoo name (``milzoo list pretrained``), an existing local folder (run directory, checkpoint
        or Hub folder), a Hub id ``org/name[@revision]`` or ``hf-hub:org/name[@revision]``, or an fsspec URL, in
        that order of precedence (docs/hub.md).  ``MILModel.from_pretrained`` returns one model: on an ensemble
        folder or a run of several folds, pick a member with ``fold=N`` or call ``Ensemble.from_pretrained``.
        """
        model = model_sharing().load(ref, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                     token=token, fold=fold, checkpoint=checkpoint, max_bytes=max_bytes)
        return cls._loaded_as(model, ref, fold)

    @classmethod
    def _loaded_as(cls, model, ref, fold):  # pragma: no cover - interface
        """``model`` as what ``cls.from_pretrained`` returns, or a :class:`CheckpointError` saying which class
        (or ``fold=``) gives it."""
        raise NotImplementedError

    @classmethod
    def _only_this_class(cls, model, base: type) -> None:
        """A subclass of ``base`` cannot be what a folder loads as: the folder is rebuilt as ``base`` itself."""
        if cls is not base and not isinstance(model, cls):
            raise CheckpointError(
                f"{cls.__name__}.from_pretrained cannot give a {cls.__name__}: a model folder is rebuilt from its "
                f"config.json as milzoo's own {base.__name__}. Load it with {base.__name__}.from_pretrained (or "
                "milzoo.load_pretrained) and wrap the result."
            )


def members_text(model) -> str:
    """``"N members (fold-00, fold-01, ...)"`` of an ensemble, for the messages of ``from_pretrained``."""
    names = list(getattr(model, "member_names", []))
    return f"{len(names)} members ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
