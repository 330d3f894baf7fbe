"""Float types across precisions: losses and probabilities are computed in at least float32 (bf16/fp16
outputs under autocast are upcast) and stay float64 for a model trained with ``train.precision = "fp64"``."""

from __future__ import annotations

import torch
from torch import Tensor


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` as float32, unless it is float64 already (then unchanged); what ``t.float()`` did, minus the
    silent downcast of a float64 model's outputs."""
    return t if t.dtype == torch.float64 else t.float()
