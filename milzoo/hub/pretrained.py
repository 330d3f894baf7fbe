"""The pretrained index: named trained models that plugins add to the zoo.

An entry names where a model's weights live on the Hugging Face Hub (a
repository and a *pinned* commit), the recipe that trains it, the metrics
measured for it, its licence and datasets, and the plugin distributions it
needs.  Plugins register entries through a hook, exactly like components::

    from milzoo import hookimpl

    @hookimpl
    def milzoo_register_pretrained(register):
        from milzoo.hub.pretrained import PretrainedEntry

        register(PretrainedEntry(
            name="mymethod-musk1",
            repo_id="my-org/mymethod-musk1",
            revision="0123456789abcdef0123456789abcdef01234567",  # the commit `milzoo push` printed
            recipe="mymethod_musk1",        # a recipe your distribution ships (`milzoo recipes`), or a path
            published=True,
            requires=["milzoo-mymethod"],
        ))

An entry can also ship its weights inside an installed distribution, as spaCy's
trained pipelines do: ``package="my_weights_pkg:weights/mymethod-musk1"`` names a
Hub folder (what ``milzoo export`` writes) inside an importable package.  Loading
then needs no network at all.  Resolution order: the installed package, then the
Hugging Face cache (a published entry's pinned revision), then the Hub.  A weight
distribution registers its entries from an ``index.json`` beside its folders with
:func:`register_package_entries`.  An entry with neither a package folder nor a
published revision is registered with ``published=False``; loading it fails with
a message that gives the commands to train and push it.  ``milzoo list pretrained`` shows the
index.  Metrics must be numbers actually measured on the published weights
(``summary.json`` of the run that produced them), never copied from a paper.

The entries live in the registry's component table under the ``pretrained`` kind, which checks their names;
this module parses their fields when they are used.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import re
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from milzoo._untrusted import valid_distribution
from milzoo.errors import CheckpointError, UnpublishedModelError

__all__ = ["PretrainedEntry", "UnpublishedModelError", "get_pretrained", "list_pretrained",
           "register_package_entries"]

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_PACKAGE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[\w.-]+(?:/[\w.-]+)*$")


class PretrainedEntry(BaseModel):
    """A named trained model: Hub repository, pinned revision, recipe, metrics and requirements."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="zoo name, e.g. psmil-camelyon16")
    repo_id: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", description="Hub repository, org/name")
    revision: str | None = Field(default=None, description="pinned 40-hex commit; None while unpublished")
    recipe: str = Field(description="the recipe that trains it: a shipped recipe's name (`milzoo recipes`, e.g. "
                        "psmil_camelyon16), which works after pip install, or a path")
    metrics: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="split -> metric -> value, measured on these weights (or empty)"
    )
    license: str | None = None
    datasets: list[str] = Field(default_factory=list)
    requires: list[str] = Field(default_factory=list, description="plugin distributions needed to load it")
    published: bool = False
    package: str | None = Field(
        default=None, description="a Hub folder shipped inside an installed package, 'module:relative/folder'; "
        "loaded before the Hub (no network)")
    description: str = ""
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self):
        if self.revision is not None and not _HEX40.match(self.revision):
            raise ValueError(
                f"revision {self.revision!r} must be a full 40-character commit sha (pin the exact upload; "
                "`milzoo push` prints it), not a branch or tag"
            )
        if self.published and self.revision is None:
            raise ValueError("a published entry needs the pinned `revision` of its upload")
        if self.package is not None and (not _PACKAGE.match(self.package) or ".." in self.package.split(":")[1]
                                         .split("/")):
            raise ValueError(f"package {self.package!r} must be 'module:relative/folder' (a folder inside an "
                             "importable package, without '..')")
        bad = [d for d in self.requires if not valid_distribution(d)]
        if bad:
            raise ValueError(f"requires names {bad!r}, which are not valid distribution names (PEP 508)")
        return self

    # ---------------------------------------------------------------- where it loads from
    def package_folder(self) -> Path | None:
        """The Hub folder inside the installed package, or None (no package, not installed, no folder)."""
        if self.package is None:
            return None
        module, _, rel = self.package.partition(":")
        try:
            if importlib.util.find_spec(module) is None:
                return None
            root = files(module)
        except (ImportError, ValueError, TypeError):
            return None
        folder = Path(str(root.joinpath(*PurePosixPath(rel).parts)))
        return folder if (folder / "config.json").is_file() else None

    @property
    def loadable(self) -> bool:
        return self.published or self.package_folder() is not None

    @property
    def sources(self) -> list[str]:
        """Where it loads from, in the order tried: ``package <module>``, ``hub org/name@sha``."""
        out = []
        if self.package_folder() is not None:
            out.append(f"package {self.package.partition(':')[0]}")
        if self.published:
            out.append(f"hub {self.repo_id}@{self.revision[:12]}")
        return out

    # ---------------------------------------------------------------- descriptions
    @property
    def summary(self) -> str:
        sources = self.sources
        text = f"[{' + '.join(sources)}]" if sources else f"[unpublished] {self.repo_id}"
        return f"{text}: {self.description}" if self.description else text

    @property
    def run_dir(self) -> str:
        return f"runs/{self.name}"

    @property
    def train_command(self) -> str:
        from milzoo.recipe.book import checkout_name

        # a checkout path of a shipped recipe is shown by its name, which works after pip install too
        return f"milzoo run {checkout_name(self.recipe)} --out {self.run_dir}"

    @property
    def push_command(self) -> str:
        return f"milzoo push {self.run_dir} {self.repo_id}"

    def missing_distributions(self) -> list[str]:
        out = []
        for dist in self.requires:
            try:
                md.version(dist)
            except md.PackageNotFoundError:
                out.append(dist)
        return out

    def unpublished_message(self) -> str:
        return (
            f"the pretrained model {self.name!r} is in the index but its weights are not published yet "
            f"(nothing has been uploaded to {self.repo_id}), so there is nothing to download. Train it yourself "
            f"with `{self.train_command}` and load the result with `milzoo.load_pretrained({self.run_dir!r})`; "
            f"to share it, push it with `{self.push_command}` (use your own org in place of "
            f"{self.repo_id.split('/')[0]!r} if you cannot write there) and pin the printed commit as this entry's "
            "`revision` with `published=True`."
        )


def _as_entry(obj: Any, name: str) -> PretrainedEntry:
    if isinstance(obj, PretrainedEntry):
        return obj
    try:
        return PretrainedEntry.model_validate(obj)
    except ValidationError as exc:
        raise CheckpointError(
            f"the pretrained entry {name!r} registered by a plugin is invalid: {exc.errors(include_url=False)}; "
            "report it to the plugin's author."
        ) from None


def get_pretrained(name: str) -> PretrainedEntry:
    """The entry registered as ``name`` (unknown names raise with "did you mean" suggestions)."""
    from milzoo.registry import _table as registry

    entry = registry.get_entry("pretrained", name)
    return _as_entry(entry.obj, name)


def list_pretrained(pattern: str = "*") -> list[PretrainedEntry]:
    """Every entry whose name matches the glob ``pattern``, sorted by name."""
    from milzoo.registry import _table as registry

    return [_as_entry(e.obj, e.name) for e in registry.COMPONENTS.entries("pretrained", pattern)]


def register_package_entries(register: Callable[[Any], None], module: str, index: str = "weights/index.json") -> None:
    """Register every entry of a weight distribution: ``index`` (inside package ``module``) maps each zoo name
    to its fields; the Hub folder of entry ``NAME`` is the folder ``NAME`` beside the index.  A weight
    distribution's plugin calls this from its ``milzoo_register_pretrained`` hook (docs/hub.md)."""
    path = files(module).joinpath(*PurePosixPath(index).parts)
    data = json.loads(path.read_text(encoding="utf-8"))
    folder = str(PurePosixPath(index).parent)
    keep = set(PretrainedEntry.model_fields) - {"name", "package"}
    for name, fields in data.items():
        register(PretrainedEntry(name=name, package=f"{module}:{folder}/{name}",
                                 **{k: v for k, v in fields.items() if k in keep}))
