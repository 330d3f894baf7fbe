"""Encoders for pre-extracted feature vectors."""

from __future__ import annotations

import math

from pydantic import Field, PositiveInt
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Encoder


class IdentityEncoder(Encoder):
    """Passes feature vectors through unchanged (images are flattened)."""

    name = "identity"

    class Config(ComponentConfig):
        pass

    def __init__(self, config, in_shape):
        super().__init__(config, in_shape)
        self.out_dim = int(math.prod(self.in_shape))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class MLPEncoder(Encoder):
    """Fully connected layers, each followed by ReLU (and dropout): the feature adapter.

    The default ``dims = [512, 512]`` is the two-layer FC+ReLU adapter that the
    PSMIL paper puts before every model (docs/methods.md section 7.8).
    """

    name = "mlp"

    class Config(ComponentConfig):
        dims: list[PositiveInt] = Field(default=[512, 512], min_length=1)
        dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
        last_dropout: bool = Field(
            default=True,
            description="dropout after the last layer too; false: only between layers (MIL-Lab's create_mlp, the "
            "patch embedding of its ABMIL)",
        )

    def __init__(self, config, in_shape):
        super().__init__(config, in_shape)
        if any(d <= 0 for d in config.dims):
            raise ValueError("mlp dims must be positive")
        layers: list[nn.Module] = []
        prev = int(math.prod(self.in_shape))
        for i, d in enumerate(config.dims):
            layers += [nn.Linear(prev, d), nn.ReLU()]
            if config.dropout > 0 and (config.last_dropout or i < len(config.dims) - 1):
                layers.append(nn.Dropout(config.dropout))
            prev = d
        self.net = nn.Sequential(*layers)
        self.out_dim = prev

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))
