"""How a recipe's ``train`` and ``optim`` settings resolve on a device: the device itself, the precision,
bags per step, the learning rate of an epoch, and the optimiser with its kernels."""

from __future__ import annotations

import math

import torch

from milzoo.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device = {name!r} but CUDA is not available here; use device = \"auto\" or \"cpu\".")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device = {name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None


def has_native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix maths is fast on ``device``: a CUDA GPU with bf16 support, or a CPU with
    AVX-512 (oneDNN's bf16 kernels).  On an AVX2-only CPU bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where :func:`has_native_bf16`, else ``fp32``; other values unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if has_native_bf16(device) else "fp32"


def lr_at(schedule, base_lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of an epoch under the recipe's schedule."""
    if schedule.name == "step":
        return base_lr * schedule.gamma ** sum(1 for m in schedule.milestones if epoch >= m)
    if schedule.name == "cosine":
        floor = min(schedule.min_lr, base_lr)
        return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
    return base_lr


#: bags per optimiser step for ``train.batch_size = "auto"``: one bag of 64 images x 3 views already fills a
#: CPU's cores; a GPU needs more images per call to be busy (docs/performance.md)
DEFAULT_BAGS_PER_STEP = {"cpu": 1, "cuda": 4}


def resolve_batch_size(batch_size: int | str, device: torch.device) -> int:
    if batch_size != "auto":
        return int(batch_size)
    return DEFAULT_BAGS_PER_STEP.get(device.type, 1)


def optimizer_kernels(cls: type, device: torch.device) -> dict[str, bool]:
    """``fused=True`` for Adam and AdamW on a GPU (one kernel for all parameters), else ``foreach=True``.

    A CPU keeps foreach: its fused kernels round differently, and CPU results must not change.  SGD keeps
    foreach on a GPU too: torch's fused SGD fails (``TypeError: expected Tensor as element 0 in argument
    2``) when a parameter first gets a gradient after others already hold momentum buffers -- PSAli's
    encoder, frozen in epoch 0, does exactly that (first seen on an H200, docs/performance.md).  Adam's
    state is made per parameter, so a late gradient is fine there."""
    import inspect

    if (device.type == "cuda" and "fused" in inspect.signature(cls).parameters
            and not issubclass(cls, torch.optim.SGD)):
        return {"fused": True, "foreach": False}
    return {"foreach": True}


def make_optimizer(optim_cfg, params, device: torch.device | None = None) -> torch.optim.Optimizer:
    """torch's SGD, Adam or AdamW (``milzoo.optim``: without the torch.compile guards that import
    ``torch._dynamo``; same arithmetic and state)."""
    from milzoo.train import optim

    params = [p for p in params if p.requires_grad]
    device = torch.device("cpu") if device is None else torch.device(device)
    if optim_cfg.name == "sgd":
        return optim.SGD(params, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                         weight_decay=optim_cfg.weight_decay, nesterov=optim_cfg.nesterov,
                         **optimizer_kernels(optim.SGD, device))
    if optim_cfg.name == "adam":
        return optim.Adam(params, lr=optim_cfg.lr, betas=optim_cfg.betas, weight_decay=optim_cfg.weight_decay,
                          **optimizer_kernels(optim.Adam, device))
    return optim.AdamW(params, lr=optim_cfg.lr, betas=optim_cfg.betas, weight_decay=optim_cfg.weight_decay,
                       **optimizer_kernels(optim.AdamW, device))
