"""The training state of an interrupted fold (``state.safetensors``): what ``--resume`` continues from.

Model and optimizer state, RNG states, loss buffers and history are one nested structure of tensors and JSON
values.  It is written as ONE safetensors file whose header metadata carries the JSON part, so a crash leaves
either the old or the new state, never a mix; nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import torch

from milzoo._atomic import atomic_write_bytes
from milzoo.checkpoint._format import tensors_bytes
from milzoo.errors import CheckpointError
from milzoo.model.sizing import bytes_text, first_line, machine_memory_bytes

#: the safetensors header key holding the JSON part of a training state
_METADATA_KEY = "milzoo_state"
#: what stands for a tensor in the JSON part: ``{"__tensor__": its key in the file}``
_TENSOR_REF = "__tensor__"


def _flatten_tensors(prefix: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` with every tensor inside nested dicts/lists moved into ``tensors`` (keyed by its path under
    ``prefix``) and replaced by a reference to that key: the JSON part of a training state."""
    if torch.is_tensor(obj):
        tensors[prefix] = obj
        return {_TENSOR_REF: prefix}
    if isinstance(obj, dict):
        return {str(k): _flatten_tensors(f"{prefix}.{k}", v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten_tensors(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]
    return obj


def _unflatten_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`_flatten_tensors`: references replaced by the tensors they name."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR_REF}:
            return tensors[obj[_TENSOR_REF]]
        return {k: _unflatten_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten_tensors(v, tensors) for v in obj]
    return obj


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Save a nested dict of tensors and JSON values as ONE safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    meta = _flatten_tensors("s", state, tensors)
    atomic_write_bytes(path, tensors_bytes(tensors, {_METADATA_KEY: json.dumps(meta)}))


def load_training_state(path: str | Path) -> dict[str, Any] | None:
    """The state :func:`save_training_state` wrote, or None when ``path`` does not exist.

    The file is sized before any tensor is read: tensors larger than this machine's memory are refused with a
    clear error (safetensors checks that its header's sizes cover the file exactly).
    """
    path = Path(path)
    if not path.exists():
        return None
    memory = machine_memory_bytes()
    size = path.stat().st_size
    if memory is not None and size > memory:
        raise CheckpointError(
            f"the training state {path} is {bytes_text(size)}, more than this machine's {bytes_text(memory)} of "
            "memory, so it cannot be read; it was not written for this model on this machine. Delete it to restart "
            "that fold."
        )
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata()[_METADATA_KEY])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        return _unflatten_tensors(meta, tensors)  # a reference to a tensor the file lacks is damage too
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, the fold restarts from scratch
        raise CheckpointError(
            f"the training state {path} is corrupted ({type(exc).__name__}: {first_line(exc)}); delete it to "
            "restart that fold."
        ) from None


def optimizer_state_from_json(sd: dict[str, Any]) -> dict[str, Any]:
    """JSON turns optimizer state keys into strings; torch wants ints."""
    return {
        "state": {int(k): v for k, v in sd["state"].items()},
        "param_groups": sd["param_groups"],
    }
