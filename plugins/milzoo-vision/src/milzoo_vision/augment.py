"""Batched image augmentations for PSAli's views (docs/methods.md section 7.5, augmentations row).

Everything here works on a whole ``[M, C, H, W]`` batch on its device with
per-sample random parameters; no per-image Python loop and no host sync.
Randomness comes from torch's global RNG (the trainer seeds it), and every call
draws the same amount of random numbers whatever the data, so a seed fixes the
result.

RandAugment: torchvision's v2 ``RandAugment`` applies one sampled op to a whole
batch, so it cannot give per-image ops.  :func:`rand_augment` re-implements its
op set and magnitude table (``num_magnitude_bins = 31``, nearest interpolation,
fill 0) with ops and signs drawn per image; posterize, solarize and equalize call
torchvision's batched v2 kernels, autocontrast is re-written without its boolean-mask
assignment (a host sync on a GPU).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor

from milzoo.components.base import Augment, ComponentConfig
from milzoo.errors import ComponentError

#: the 14 ops of torchvision.transforms.v2.RandAugment, in its order
RANDAUGMENT_OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
    "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _uniform(m: int, device) -> Tensor:
    return torch.rand(m, device=device)


def random_flip(x: Tensor, p: float = 0.5) -> Tensor:
    """Horizontal flip of each image with probability ``p``."""
    flip = _uniform(x.shape[0], x.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_crop(x: Tensor, pad: int, pad_mode: str = "constant") -> Tensor:
    """Pad by ``pad`` on every side, then take a random ``H x W`` window per image.

    Equivalent to torchvision's ``RandomCrop(size=(H, W), padding=pad)``: each
    output is the image shifted by ``(dy, dx)`` in ``[-pad, pad]``, with zeros
    (``constant``) or mirrored pixels (``reflect``) entering from the border.
    """
    if pad <= 0:
        return x
    m, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode=pad_mode)
    oy = torch.randint(0, 2 * pad + 1, (m,), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (m,), device=x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # [M, H]
    cols = ox[:, None] + torch.arange(w, device=x.device)  # [M, W]
    xr = xp.gather(2, rows[:, None, :, None].expand(m, c, h, w + 2 * pad))
    return xr.gather(3, cols[:, None, None, :].expand(m, c, h, w))


def cutout(x: Tensor, size: int, value: float = 0.0) -> Tensor:
    """Cutout (DeVries & Taylor, 2017): one ``size x size`` hole per image, set to ``value``.

    The centre is uniform over the image, so holes near the border are clipped
    (rows ``[cy - size//2, cy - size//2 + size)`` within the image).
    """
    m, _, h, w = x.shape
    if size <= 0:
        return x
    cy = torch.randint(0, h, (m,), device=x.device)
    cx = torch.randint(0, w, (m,), device=x.device)
    y0 = cy - size // 2
    x0 = cx - size // 2
    r = torch.arange(h, device=x.device)
    q = torch.arange(w, device=x.device)
    in_r = (r >= y0[:, None]) & (r < (y0 + size)[:, None])  # [M, H]
    in_c = (q >= x0[:, None]) & (q < (x0 + size)[:, None])  # [M, W]
    hole = in_r[:, :, None] & in_c[:, None, :]
    return x.masked_fill(hole[:, None], value)


# --------------------------------------------------------------------------- RandAugment
def randaugment_magnitudes(magnitude: int, num_bins: int, h: int, w: int) -> dict[str, float]:
    """torchvision's RandAugment magnitude table evaluated at bin ``magnitude``.

    At the default (magnitude 9 of 31 bins): shear 0.09 (atan -> 5.1 deg), translate
    int(150/331 * size * 0.3) px (4 px at 32), rotate 9 deg, brightness/color/contrast/
    sharpness factor 1 +- 0.27, posterize 7 bits, solarize threshold 0.7.
    """
    frac = magnitude / (num_bins - 1)
    return {
        "ShearX": 0.3 * frac,
        "ShearY": 0.3 * frac,
        "TranslateX": float(int(150.0 / 331.0 * w * frac)),
        "TranslateY": float(int(150.0 / 331.0 * h * frac)),
        "Rotate": 30.0 * frac,
        "Brightness": 0.9 * frac,
        "Color": 0.9 * frac,
        "Contrast": 0.9 * frac,
        "Sharpness": 0.9 * frac,
        "Posterize": float(int(round(8 - magnitude / ((num_bins - 1) / 4)))),
        "Solarize": 1.0 - frac,
    }


def _grayscale(x: Tensor) -> Tensor:
    """torchvision's luma weights (0.2989, 0.587, 0.114), applied with Python scalars: a weight tensor built
    from host numbers would be a host-to-device copy in every step."""
    if x.shape[1] == 3:
        return x[:, 0:1] * 0.2989 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114
    return x.mean(1, keepdim=True)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)


def _sharpness_degenerate(x: Tensor) -> Tensor:
    """torchvision's sharpness blur: 3x3 kernel (1s, 5 in the centre)/13, border pixels kept."""
    c = x.shape[1]
    if x.shape[-1] <= 2 or x.shape[-2] <= 2:
        return x
    k = x.new_full((c, 1, 3, 3), 1.0 / 13.0)  # made on the device: no host-to-device copy
    k[:, :, 1, 1] = 5.0 / 13.0
    out = x.clone()
    out[..., 1:-1, 1:-1] = F.conv2d(x, k, groups=c)
    return out


def _autocontrast(x: Tensor) -> Tensor:
    """torchvision's ``autocontrast`` for float images in [0, 1], with ``torch.where`` where torchvision
    assigns through a boolean mask (``minimum[eq] = 0``), which makes a GPU wait for the host."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    scale = torch.where(flat, 1.0, hi - lo)
    lo = torch.where(flat, 0.0, lo)
    return ((x - lo) / scale).clamp(0.0, 1.0)


def _affine_warp(x: Tensor, op: Tensor, sign: Tensor, mags: dict[str, float]) -> Tensor:
    """Per-image shear/translate/rotate by inverse mapping of pixel centres (nearest, fill 0).

    ShearX/Y shear about the top-left pixel (torchvision uses ``center=[0, 0]`` for
    them), translations shift by whole pixels, rotation turns about the image centre.
    Images whose op is not geometric get the identity map.
    """
    m, _, h, w = x.shape
    dev, dt = x.device, torch.float32
    is_op = {name: (op == RANDAUGMENT_OPS.index(name)).to(dt) for name in _GEOMETRIC}
    s = sign.to(dt)
    # signs follow torchvision: a positive magnitude gives the same image as F.affine / F.rotate
    shx = is_op["ShearX"] * s * mags["ShearX"]
    shy = is_op["ShearY"] * s * mags["ShearY"]
    tx = is_op["TranslateX"] * s * mags["TranslateX"]
    ty = is_op["TranslateY"] * s * mags["TranslateY"]
    theta = is_op["Rotate"] * s * math.radians(mags["Rotate"])  # counter-clockwise, as F.rotate
    cos, sin = torch.cos(theta), torch.sin(theta)
    ys = torch.arange(h, device=dev, dtype=dt).view(1, h, 1)
    xs = torch.arange(w, device=dev, dtype=dt).view(1, 1, w)
    # inverse maps (output pixel -> input pixel); at most one of the parameters is non-zero per image
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    dx, dy = xs - cx, ys - cy
    xin = cos.view(-1, 1, 1) * dx - sin.view(-1, 1, 1) * dy + cx
    yin = sin.view(-1, 1, 1) * dx + cos.view(-1, 1, 1) * dy + cy
    xin = xin + shx.view(-1, 1, 1) * ys - tx.view(-1, 1, 1)
    yin = yin + shy.view(-1, 1, 1) * xs - ty.view(-1, 1, 1)
    grid = torch.stack(((2 * xin + 1) / w - 1, (2 * yin + 1) / h - 1), dim=-1)
    return F.grid_sample(x, grid.to(x.dtype), mode="nearest", padding_mode="zeros", align_corners=False)


def apply_randaugment_ops(x: Tensor, op: Tensor, sign: Tensor, mags: dict[str, float]) -> Tensor:
    """One RandAugment slot: image ``j`` gets op ``RANDAUGMENT_OPS[op[j]]`` with sign ``sign[j]`` (+-1).

    Every op is computed for the whole batch and each image keeps the one it
    drew: cheap at MIL image sizes, and free of host syncs on a GPU.
    """
    from torchvision.transforms.v2 import functional as TF

    m, c = x.shape[:2]
    sign = sign.to(x.dtype)
    factor = (1.0 + sign * mags["Brightness"]).view(m, 1, 1, 1)  # brightness/color/contrast/sharpness: same table
    gray = _grayscale(x)
    geometric = torch.zeros(m, dtype=torch.bool, device=x.device)
    for g in _GEOMETRIC:
        geometric |= op == RANDAUGMENT_OPS.index(g)
    candidates = [
        (geometric, _affine_warp(x, op, sign, mags)),
        ("Brightness", _blend(x, torch.zeros_like(x), factor)),
        ("Color", _blend(x, gray, factor)),
        ("Contrast", _blend(x, gray.mean(dim=(1, 2, 3), keepdim=True), factor)),
        ("Sharpness", _blend(x, _sharpness_degenerate(x), factor)),
        ("Posterize", TF.posterize(x, bits=int(mags["Posterize"]))),
        ("Solarize", TF.solarize(x, threshold=mags["Solarize"])),
        ("AutoContrast", _autocontrast(x) if c in (1, 3) else x),
        ("Equalize", TF.equalize(x.clamp(0.0, 1.0)) if c in (1, 3) else x),
    ]
    out = x
    for which, value in candidates:
        sel = which if isinstance(which, Tensor) else op == RANDAUGMENT_OPS.index(which)
        out = torch.where(sel.view(m, 1, 1, 1), value, out)
    return out


def rand_augment(x: Tensor, num_ops: int = 2, magnitude: int = 9, num_bins: int = 31) -> Tensor:
    """Batched RandAugment on float images in ``[0, 1]``: each image gets its own ``num_ops`` ops.

    Same 14 ops, sampling (uniform with replacement, random sign for the signed
    ops) and magnitudes as ``torchvision.transforms.v2.RandAugment(num_ops,
    magnitude, num_bins)``, but drawn per image instead of per call.
    """
    if num_ops <= 0 or x.shape[0] == 0:
        return x
    m, _, h, w = x.shape
    mags = randaugment_magnitudes(magnitude, num_bins, h, w)
    for _ in range(num_ops):
        op = torch.randint(len(RANDAUGMENT_OPS), (m,), device=x.device)
        sign = torch.where(_uniform(m, x.device) < 0.5, -1.0, 1.0)
        x = apply_randaugment_ops(x, op, sign, mags)
    return x


# --------------------------------------------------------------------------- the component
class MILViews(Augment):
    """Weak view + strong views of every instance, as batched tensor ops (view 0 = weak).

    ``gray28``: weak = horizontal flip + random crop (pad 4); strong = weak + Cutout (1 hole, 16 px).
    ``rgb32``:  weak = flip + crop (pad 4); strong = weak + RandAugment(2, 9) + Cutout (1 hole, 16 px).
    Hole sizes are for 28/32-pixel images and scale with the image size.
    """

    name = "mil_views"
    #: instance shape used by the contract suite (milzoo.testing): the rgb32 preset, RandAugment included
    contract_in_shape = (3, 32, 32)

    class Config(ComponentConfig):
        preset: Literal["auto", "gray28", "rgb32"] = Field(
            default="auto", description="'auto': gray28 for 1-channel images, rgb32 otherwise"
        )
        num_views: PositiveInt = Field(default=3, description="views per instance, the weak view 0 included")
        view0: Literal["weak", "plain"] = Field(
            default="weak",
            description="view 0 (the one the pooling and bag loss see): 'weak' = flip + crop (the paper), 'plain' = "
            "the image unaugmented; the strong views are unchanged",
        )
        flip: bool = Field(default=True, description="random horizontal flip (p = 0.5) in every view")
        pad: int = Field(default=4, ge=0, description="padding of the random crop (0 disables the crop)")
        pad_mode: Literal["constant", "reflect"] = Field(default="constant", description="crop padding fill")
        cutout: bool = Field(default=True, description="Cutout in the strong views")
        cutout_size: PositiveInt | None = Field(
            default=None, description="hole side in pixels; default 16 at 28 (gray28) or 32 (rgb32) px, scaled"
        )
        cutout_value: float = Field(default=0.0, description="value written into the hole ([0, 1] pixel space)")
        randaugment: bool = Field(default=True, description="RandAugment in the strong views (rgb32 preset only)")
        ra_num_ops: int = Field(default=2, ge=0, description="RandAugment ops per image")
        ra_magnitude: int = Field(default=9, ge=0, le=30, description="RandAugment magnitude bin (of 31)")

    def __init__(self, config, in_shape):
        super().__init__(config, in_shape)
        if len(self.in_shape) != 3:
            raise ComponentError(
                f"augment 'mil_views' needs image instances (C, H, W), the dataset gives {self.in_shape}; "
                "remove the [augment] section for feature-vector datasets."
            )
        c, h, w = self.in_shape
        preset = config.preset
        if preset == "auto":
            preset = "gray28" if c == 1 else "rgb32"
        self.preset = preset
        self.num_views = int(config.num_views)
        ref = 28 if preset == "gray28" else 32
        self.cutout_size = int(config.cutout_size or max(1, round(16 * min(h, w) / ref)))
        self.use_randaugment = bool(config.randaugment and preset == "rgb32" and config.ra_num_ops > 0)

    def weak(self, x: Tensor) -> Tensor:
        if self.config.flip:
            x = random_flip(x)
        return random_crop(x, self.config.pad, self.config.pad_mode)

    def strong(self, x: Tensor) -> Tensor:
        x = self.weak(x)
        if self.use_randaugment:
            x = rand_augment(x, self.config.ra_num_ops, self.config.ra_magnitude)
        if self.config.cutout:
            x = cutout(x, self.cutout_size, self.config.cutout_value)
        return x

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            x = x.float()
        m = x.shape[0]
        v = self.num_views
        weak = x if self.config.view0 == "plain" else self.weak(x)
        if v == 1:
            return weak.unsqueeze(0)
        rep = x.unsqueeze(0).expand(v - 1, *x.shape).reshape((v - 1) * m, *x.shape[1:])
        strong = self.strong(rep).reshape(v - 1, m, *x.shape[1:])
        return torch.cat([weak.unsqueeze(0), strong], dim=0)
