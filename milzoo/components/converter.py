"""Converters: the weights of a model trained by another toolkit, mapped key by key onto a milzoo model.

A plugin that implements a model family registers a :class:`Converter` subclass for each foreign format it can
read (hook ``milzoo_register_converters``; ``milzoo list converters``).  The converter only *plans*: from the
foreign state dict (already read safely, unwrapped and stripped of the prefixes it declares) it infers the
architecture and returns a :class:`ConversionPlan` naming the milzoo components, their options, and for every
foreign key the milzoo key it becomes.  :func:`milzoo.convert` (:mod:`milzoo.conversion`) does the rest in one place for every
format: it reads the file (``torch.load(weights_only=True)`` or safetensors, nothing else), refuses missing,
unexpected and misshapen keys by name, builds the model through the registry, loads the tensors strictly and
writes a Hub folder that records where the weights came from.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import Tensor

from milzoo.components.base import Component, ComponentConfig

log = logging.getLogger(__name__)


@dataclass
class ConversionPlan:
    """What a foreign state dict becomes.

    ``keys`` maps **every** key the foreign state dict must hold (after unwrapping and prefix stripping) to the
    key of the milzoo model's ``state_dict`` it fills (``"pooling.fc.0.weight"``); a foreign key not in it is
    unexpected, a key of it absent from the file is missing.  ``new`` holds tensors the foreign model does not
    have (a classification head MIL-Lab's FEATHER checkpoints ship without), already initialised; when it is not
    empty the converted model is marked ``head: "untrained"``.  ``dropped`` names foreign keys that are knowingly
    left out (a head the user asked to replace); they are recorded.  ``architecture`` describes the foreign model in
    a few words ("CLAM_SB, gated, size small"); ``notes`` are sentences the user and the model card must see.
    """

    encoder: dict[str, Any]
    pooling: dict[str, Any]
    in_shape: tuple[int, ...]
    num_classes: int
    keys: dict[str, str]
    architecture: str
    new: dict[str, Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def head(self) -> Literal["trained", "untrained"]:
        return "untrained" if self.new else "trained"


def tensor_shape(state: Mapping[str, Tensor], key: str, ndim: int, fmt: str) -> tuple[int, ...]:
    """The shape of ``state[key]``, which a state dict of the format ``fmt`` (words such as "official TransMIL
    (models/TransMIL.py)") always holds as an ``ndim``-d tensor; a missing key or another rank is a
    :class:`~milzoo.errors.ConversionError` naming the key and the format."""
    from milzoo.errors import ConversionError

    if key not in state:
        raise ConversionError(f"the checkpoint has no {key!r}, which every {fmt} state dict holds; convert a "
                              "complete state dict of that code (or name another format: `milzoo list converters`).")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise ConversionError(f"{key!r} has shape {shape}, not the {ndim}-d tensor of the {fmt} code; the file is "
                              "not such a state dict.")
    return shape


class Converter(Component):
    """Base of every converter; the first line of a subclass's docstring is what ``milzoo list`` shows.

    Class attributes a subclass sets:

    - ``name``: the format's registry name (``milzoo convert NAME SOURCE OUT_DIR``);
    - ``source``: where such weights come from (the official repository), recorded in the Hub folder;
    - ``wrappers``: keys of a dict saved around the state dict that the official code writes
      (``("state_dict",)`` for a PyTorch Lightning checkpoint); the weights are taken from the first one present,
      and only when it holds a plain ``name -> tensor`` dict;
    - ``prefixes``: key prefixes removed when *every* key carries one (``"module."`` of ``nn.DataParallel``,
      ``"model."`` of a Lightning module or a Hugging Face wrapper);
    - ``extract_hint``: how a user of that toolkit saves the bare state dict, for a file milzoo refuses to read;
    - ``Config``: the options the weights do not determine (``--option key=value``), with defaults.
    """

    kind: ClassVar[str] = "converter"
    source: ClassVar[str] = ""
    wrappers: ClassVar[tuple[str, ...]] = ()
    prefixes: ClassVar[tuple[str, ...]] = ("module.",)
    extract_hint: ClassVar[str] = (
        "save the model's weights on their own with the toolkit's code (torch.save(model.state_dict(), path)) and "
        "convert that file")

    def __init__(self, config: ComponentConfig):
        self.config = config

    def plan(self, state: Mapping[str, Tensor], num_classes: int | None) -> ConversionPlan:
        """Infer the architecture from ``state`` (shapes of a few keys) and map every key.

        ``num_classes`` is what the user asked for (``--num-classes`` or the number of ``--class-names``), or
        None.  Raise :class:`milzoo.errors.ConversionError` naming the key for anything the converter cannot
        read; missing, unexpected and misshapen keys are found by the caller from the plan.
        """
        raise NotImplementedError  # pragma: no cover - interface
