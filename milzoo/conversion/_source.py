"""Reading another toolkit's weights: a plain ``name -> tensor`` dict, and nothing else.

``.safetensors`` files are read with safetensors (they cannot hold anything but tensors); every other file with
``torch.load(..., weights_only=True)``, which refuses to unpickle objects (a whole model, an ``addict`` config, a
``pathlib`` path).  What is read must be a non-empty dict of string keys and dense tensors, or a dict holding one
under a wrapper key the format declares (``{"state_dict": ..., "epoch": ...}`` of PyTorch Lightning).  A folder
(a Hugging Face snapshot) stands for its ``model.safetensors``, else its ``pytorch_model.bin``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from milzoo._untrusted import shown
from milzoo.errors import ConversionError

log = logging.getLogger(__name__)

#: the file a folder stands for, in order of preference
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")


def source_file(path: str | Path) -> Path:
    """The weights file ``path`` names: itself, or in a folder its ``model.safetensors`` / ``pytorch_model.bin``."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise ConversionError(
            f"{path} is a folder without {' or '.join(FOLDER_FILES)}; give the weights file itself (.pt, .pth, "
            ".bin, .ckpt or .safetensors).")
    if not path.is_file():
        raise ConversionError(f"{path} does not exist; give the path of the weights file to convert.")
    return path


def is_plain(obj: Any) -> bool:
    """Whether ``obj`` is a non-empty dict of string keys and tensors (a state dict and nothing else)."""
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _describe(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    if not obj:
        return "an empty dict"
    odd = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    return (f"a dict whose entries {', '.join(shown(k, 40) for k in odd[:6])}{' ...' if len(odd) > 6 else ''} "
            "are not tensors")


def _why(exc: Exception) -> str:
    """What torch.load said, in one line: the object it refused to unpickle, else its first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it pickles an object of {shown(found.group(1), 120)}, which weights_only does not unpickle"
    inner = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    first = inner.group(1) if inner else (text.strip().splitlines()[0] if text.strip() else "")
    return f"{type(exc).__name__}: {first.strip()[:240]}"


def _load_pickle(path: Path, hint: str) -> Any:
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols; the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for a damaged zip, ...
        raise ConversionError(
            f"{path} is not a plain state dict of tensors, so it was not read ({_why(exc)}). milzoo "
            "reads .pt files only with torch.load(weights_only=True), which never unpickles objects (a whole model, "
            f"a config object, a path); to convert these weights, {hint}."
        ) from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, a truncated header, ...
        raise ConversionError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {shown(str(exc), 200)}); it is damaged or "
            "not a safetensors file (rename a torch.save file to .pt)."
        ) from None


def read_state_dict(path: str | Path, *, wrappers: Sequence[str] = (),
                    hint: str = "save the model's weights on their own (torch.save(model.state_dict(), path))",
                    ) -> tuple[dict[str, torch.Tensor], str | None]:
    """The plain state dict in ``path``, and the wrapper key it was taken from (None: the file is one).

    Refuses (:class:`~milzoo.errors.ConversionError`) a file ``torch.load(weights_only=True)`` will not read, and
    anything that is not a dict of tensors or such a dict under one of ``wrappers``; ``hint`` tells the user how
    to save the bare state dict with the toolkit's own code.
    """
    path = source_file(path)
    if path.suffix == ".safetensors":
        obj: Any = _load_safetensors(path)
    else:
        obj = _load_pickle(path, hint)
    if is_plain(obj):
        return dict(obj), None
    if isinstance(obj, Mapping):
        for key in wrappers:
            if key in obj and is_plain(obj[key]):
                others = sorted(str(k) for k in obj if k != key)
                log.info("%s: the weights are the %r entry; ignored %s", path, key, others)
                return dict(obj[key]), key
    wrapped = (f" or a dict holding one under {' or '.join(repr(w) for w in wrappers)}" if wrappers else "")
    raise ConversionError(
        f"{path} holds {_describe(obj)}, not a plain state dict of tensors (name -> tensor){wrapped}, so it was not "
        "converted. "
        f"To convert these weights, {hint}."
    )


def strip_prefixes(state: dict[str, torch.Tensor], prefixes: Sequence[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove each of ``prefixes`` while *every* key carries it (``module.module.x`` loses both); the removed ones."""
    removed: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if prefix and all(k.startswith(prefix) and len(k) > len(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                removed.append(prefix)
                changed = True
    return state, removed
