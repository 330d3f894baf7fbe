"""Bag classifiers shared by poolings: the paper-style ``nn.Linear`` and the official PSMIL code's form.

The official PSMIL code (``LMBDA-design/PSAMIL``, ``model/PSAMIL.py``) scores bags and instances with a
bias-free ``d x k`` parameter ``W`` initialised by ``nn.init.kaiming_uniform_``.  For a 2-D tensor of shape
``[d, k]`` PyTorch takes ``fan_in = k`` (the second dimension), so with the default ``a = 0`` the bound is
``sqrt(2) * sqrt(3 / k) = sqrt(6 / k)``: 0.77 for 10 classes, against ``1 / sqrt(d)`` = 0.044 for an
``nn.Linear(512, 10)``.  Logits start about 17x larger, which matters for a loss on softmax outputs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

ClassifierKind = Literal["linear", "kaiming_nobias"]


def kaiming_nobias_bound(num_classes: int) -> float:
    """The half-width of the official code's uniform initialisation, ``sqrt(6 / k)``."""
    return math.sqrt(6.0 / num_classes)


def bag_classifier(in_dim: int, num_classes: int, kind: ClassifierKind = "linear") -> nn.Linear:
    """``nn.Linear(in_dim, num_classes)``; for ``kind = "kaiming_nobias"`` bias-free, weights U(+-sqrt(6/k)).

    Both are returned as ``nn.Linear`` (the code's ``h @ W`` is ``Linear`` with ``weight = W.T``), so a
    pooling's forward, checkpoints and ``instance_logits`` do not depend on the choice.
    """
    if kind == "linear":
        return nn.Linear(in_dim, num_classes)
    if kind == "kaiming_nobias":
        layer = nn.Linear(in_dim, num_classes, bias=False)
        bound = kaiming_nobias_bound(num_classes)
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound)
        return layer
    raise ValueError(f"unknown classifier kind {kind!r}; use 'linear' or 'kaiming_nobias'")
