"""How big the model of a recipe is, found before anything is allocated.

A typo such as ``dims = [1000000000000]`` would make torch try to allocate
terabytes (or fail deep inside ``torch.empty`` with a C++ overflow message).
The model is built on the meta device first (no memory), its size compared
with the machine's memory, and a layer size that cannot even be represented is
reported as a recipe problem.
"""

from __future__ import annotations

import os

import torch

from milzoo.errors import UserError

#: parameters + gradients + two Adam moments: the float32 copies training holds per parameter
TRAINING_COPIES = 4


def machine_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _is_size_overflow(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, OverflowError) or "overflow" in text or "too large" in text


def check_model_size(build, source: str, memory_bytes: int | None = None) -> None:
    """Build ``build()`` on the meta device and refuse a model that cannot fit in memory.

    A component that cannot be built on the meta device (data-dependent code in
    its constructor) is not checked here; user errors it raises propagate.
    """
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):  # the caller's RNG stream is untouched
            model = build()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - decide below whether it is the recipe's sizes
        if _is_size_overflow(exc):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"the model of {source} cannot be built: a layer size is too large to represent ({first}). "
                "Check the size options of the encoder and pooling (e.g. encoder.dims, pooling.attn_hidden)."
            ) from None
        return
    params = [(n, p) for n, p in model.named_parameters()] + [(n, b) for n, b in model.named_buffers()]
    total_bytes = sum(t.numel() * t.element_size() for _, t in params)
    need = total_bytes * TRAINING_COPIES
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    if memory is None or need <= memory:
        return
    largest = sorted(params, key=lambda nt: nt[1].numel(), reverse=True)[:3]
    shown = ", ".join(f"{n} {list(t.shape)}" for n, t in largest)
    n_params = sum(t.numel() for _, t in params)
    raise UserError(
        f"the model of {source} has {n_params:,} parameters ({total_bytes / 2**30:,.1f} GiB; training needs about "
        f"{need / 2**30:,.1f} GiB with gradients and optimiser state), more than this machine's "
        f"{memory / 2**30:,.1f} GiB of memory. The largest tensors: {shown}. Check the size options of the "
        "encoder and pooling in the recipe."
    )
