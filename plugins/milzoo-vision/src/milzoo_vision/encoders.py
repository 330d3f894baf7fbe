"""Image encoders: the 2-layer CNN (FMNIST) and ResNet-18 (SVHN/CIFAR) of docs/methods.md section 7.1.

Both take float images ``[M, C, H, W]`` in ``[0, 1]`` (what the milzoo-vision
datasets yield) and normalise them as their first step, so augmentations work
in ``[0, 1]`` pixel space and checkpoints carry the normalisation in their spec.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from milzoo.components.base import ComponentConfig, Encoder
from milzoo.components.download import downloading, fetch_command
from milzoo.datasets.files import check_data_file
from milzoo.errors import ComponentError

#: the :class:`milzoo.components.Download` of the ImageNet weights (``milzoo data fetch resnet18-imagenet``)
RESNET18_DOWNLOAD = "resnet18-imagenet"


def resnet18_weights_file() -> Path:
    """Where torchvision keeps the ImageNet weights of ResNet-18: the torch hub cache (``$TORCH_HOME``)."""
    from torchvision.models import ResNet18_Weights

    name = posixpath.basename(urllib.parse.urlparse(ResNet18_Weights.IMAGENET1K_V1.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def fetch_resnet18_weights(root: Path | None = None) -> Path:
    """Download the ImageNet weights of ResNet-18 with torchvision's weights API into the torch hub cache."""
    from torchvision.models import ResNet18_Weights

    path = resnet18_weights_file()
    with downloading("the ImageNet weights of resnet18", RESNET18_DOWNLOAD, path.parent):
        ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    return path

#: name -> (mean, std) per channel; a single value is broadcast over channels
NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "fmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "half": ((0.5,), (0.5,)),
    "none": ((0.0,), (1.0,)),
}

PresetName = Literal["auto", "imagenet", "fmnist", "cifar10", "cifar100", "svhn", "half", "none"]


class Normalization(ComponentConfig):
    """Explicit per-channel statistics (one value, or one per channel)."""

    mean: list[float] = Field(min_length=1, description="per-channel mean subtracted from [0, 1] images")
    std: list[float] = Field(min_length=1, description="per-channel std dividing the centred images")


NORMALIZE_DESCRIPTION = (
    "input normalisation applied first thing in the encoder: a preset name "
    f"({', '.join(NORMALIZATION_PRESETS)}) or {{mean = [...], std = [...]}}; "
    "'auto' = 'fmnist' for 1-channel inputs, 'imagenet' for 3-channel ones, none otherwise"
)


def resolve_normalization(spec: str | Normalization, channels: int) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` as ``[1, C, 1, 1]`` tensors for ``channels`` input channels."""
    if isinstance(spec, str):
        if spec == "auto":
            spec = {1: "fmnist", 3: "imagenet"}.get(channels, "none")
        mean, std = NORMALIZATION_PRESETS[spec]
    else:
        mean, std = tuple(spec.mean), tuple(spec.std)
    out = []
    for what, vals in (("mean", mean), ("std", std)):
        if len(vals) == 1:
            vals = vals * channels
        if len(vals) != channels:
            raise ComponentError(
                f"normalize {what} has {len(vals)} values but the images have {channels} channels; "
                "give one value or one per channel."
            )
        out.append(torch.tensor(vals, dtype=torch.float32).view(1, channels, 1, 1))
    if any(float(v) <= 0 for v in std):  # on the config values: the model also builds on the meta device
        raise ComponentError("normalize std values must be positive.")
    return out[0], out[1]


def _image_shape(name: str, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ComponentError(
            f"encoder {name!r} needs image instances of shape (C, H, W) but the dataset gives {tuple(in_shape)}; "
            "use an image dataset (e.g. fmnist_bags) or a feature encoder such as 'mlp'."
        )
    return int(in_shape[0]), int(in_shape[1]), int(in_shape[2])


class _ImageEncoder(Encoder):
    def _init_normalization(self, spec, channels: int) -> None:
        mean, std = resolve_normalization(spec, channels)
        # derived from the config, so not saved (persistent=False) and rebuilt identically on load
        self.register_buffer("norm_mean", mean, persistent=False)
        self.register_buffer("norm_std", std, persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            x = x.float()
        # elementwise ops keep the input's memory format (channels_last stays channels_last)
        return (x - self.norm_mean.to(x.dtype)) / self.norm_std.to(x.dtype)


class CNN2Encoder(_ImageEncoder):
    """The 2-layer CNN of the PSMIL FMNIST benchmark (the classic PyTorch MNIST net), d = 512.

    Conv(C->32, k3) - ReLU - Conv(32->64, k3) - ReLU - MaxPool2 - Dropout2d(0.25)
    - flatten - Linear(->512) - ReLU.  The flatten size follows from ``in_shape``
    (9216 for 1x28x28).
    """

    name = "cnn2"
    #: instance shape used by the contract suite (milzoo.testing)
    contract_in_shape = (1, 28, 28)

    class Config(ComponentConfig):
        dim: PositiveInt = Field(default=512, description="output feature size d (512 in the paper)")
        dropout: float = Field(default=0.25, ge=0.0, lt=1.0, description="Dropout2d rate after the max-pool")
        normalize: PresetName | Normalization = Field(default="auto", description=NORMALIZE_DESCRIPTION)

    def __init__(self, config, in_shape):
        super().__init__(config, in_shape)
        c, h, w = _image_shape(self.name, self.in_shape)
        if h < 6 or w < 6:
            raise ComponentError(f"cnn2 needs images of at least 6x6 pixels, got {h}x{w}.")
        self._init_normalization(config.normalize, c)
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout2d(config.dropout),
        )
        flat = 64 * ((h - 4) // 2) * ((w - 4) // 2)
        self.fc = nn.Linear(flat, config.dim)
        self.out_dim = int(config.dim)

    def forward(self, x: Tensor) -> Tensor:
        z = self.features(self.normalize(x))
        return F.relu(self.fc(torch.flatten(z, 1)))


class ResNet18Encoder(_ImageEncoder):
    """torchvision ResNet-18 with ``fc = Identity`` (d = 512), optionally ImageNet-pretrained.

    ``resize`` resizes the (normalised) batch bilinearly, e.g. to 224 as in the
    paper's code.  ``small_input`` (not in the paper) swaps the 7x7/stride-2 stem
    and its max-pool for a 3x3/stride-1 conv, the usual CIFAR variant for 32x32
    inputs without resizing.
    """

    name = "resnet18"
    #: instance shape used by the contract suite (milzoo.testing)
    contract_in_shape = (3, 32, 32)

    class Config(ComponentConfig):
        pretrained: bool = Field(
            default=False,
            description="load torchvision's ImageNet weights (IMAGENET1K_V1; downloaded into the torch hub cache)",
        )
        weights_path: str | None = Field(
            default=None, description="load a torchvision resnet18 state dict from this file instead (offline use)"
        )
        resize: PositiveInt | None = Field(default=None, description="resize inputs to resize x resize (e.g. 224)")
        small_input: bool = Field(
            default=False, description="3x3 stride-1 stem without max-pool for 32x32 inputs (not the paper's model)"
        )
        freeze_bn: bool = Field(
            default=False,
            description="keep BatchNorm layers in eval mode (running statistics) during training; not in the paper",
        )
        normalize: PresetName | Normalization = Field(default="auto", description=NORMALIZE_DESCRIPTION)

    @classmethod
    def downloads(cls, config) -> tuple[str, ...]:
        # weights_path replaces the download
        return (RESNET18_DOWNLOAD,) if config.pretrained and config.weights_path is None else ()

    def __init__(self, config, in_shape):
        super().__init__(config, in_shape)
        from torchvision.models import resnet18

        c, _, _ = _image_shape(self.name, self.in_shape)
        self._init_normalization(config.normalize, c)
        net = resnet18(weights=None)
        state = self._pretrained_state(config)
        if state is not None:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            if c != 3:
                if c != 1:
                    raise ComponentError(
                        f"pretrained resnet18 weights expect 1 or 3 input channels, the images have {c}."
                    )
                # grey input: the RGB filters summed over colour give the same response to a grey image
                state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
        if c != 3:
            net.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if config.small_input:
            net.conv1 = nn.Conv2d(c, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
            if state is not None:
                state.pop("conv1.weight")
        net.fc = nn.Identity()
        if state is not None:
            missing, unexpected = net.load_state_dict(state, strict=False)
            allowed_missing = {"conv1.weight"} if config.small_input else set()
            if set(missing) - allowed_missing or unexpected:
                raise ComponentError(
                    f"the resnet18 weights do not match torchvision's resnet18 (missing {sorted(missing)}, "
                    f"unexpected {sorted(unexpected)}); give a torchvision resnet18 state dict."
                )
        self.net = net
        self.out_dim = 512

    @staticmethod
    def _pretrained_state(config) -> dict[str, Tensor] | None:
        if config.weights_path is not None:
            # a regular file only: a device or a pipe would be read for ever
            check_data_file(config.weights_path, "resnet18 weights_path", "fix the path or remove the option",
                            must_exist=False)
            try:
                state = torch.load(config.weights_path, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                raise ComponentError(
                    f"resnet18 weights_path {config.weights_path} does not exist; fix the path or remove the option."
                ) from None
            except Exception as exc:  # noqa: BLE001
                first = str(exc).split(". ")[0].rstrip(".")  # torch goes on to advise weights_only=False: never
                raise ComponentError(
                    f"cannot read resnet18 weights from {config.weights_path} ({type(exc).__name__}: {first}); it "
                    "must be a torchvision resnet18 state dict saved with torch.save (tensors only)."
                ) from None
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            return dict(state)
        if config.pretrained:
            from torchvision.models import ResNet18_Weights

            cached = resnet18_weights_file()
            if not cached.is_file():  # offline, this is a DownloadError naming `milzoo data fetch resnet18-imagenet`
                fetch_resnet18_weights()
            try:
                return dict(ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False))
            except Exception as exc:  # noqa: BLE001 - a damaged file in the cache
                raise ComponentError(
                    f"could not load the ImageNet weights of resnet18 from {cached} ({type(exc).__name__}: {exc}). "
                    f"Delete that file and get it again (`{fetch_command(RESNET18_DOWNLOAD)}`), or set "
                    "`weights_path` to a local copy, or set `pretrained = false`."
                ) from None
        return None

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.config.freeze_bn:
            for m in self.net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        if self.config.resize is not None and tuple(x.shape[-2:]) != (self.config.resize,) * 2:
            x = F.interpolate(x, size=(self.config.resize,) * 2, mode="bilinear", align_corners=False)
        return self.net(x)
