"""Tests of the batched augmentations (mil_views and its building blocks)."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import RandAugment
from torchvision.transforms.v2 import functional as TF

from milzoo.errors import ComponentError
from milzoo_vision.augment import (
    RANDAUGMENT_OPS,
    MILViews,
    apply_randaugment_ops,
    cutout,
    rand_augment,
    randaugment_magnitudes,
    random_crop,
)


def views(in_shape, **opts):
    return MILViews(MILViews.Config(**opts), in_shape)


def coded_images(m, c=1, h=12, w=12):
    """Images whose every pixel value is distinct and > 0 (so positions can be recovered)."""
    n = c * h * w
    base = (torch.arange(n, dtype=torch.float32) + 1) / (n + 1)
    return base.view(1, c, h, w).repeat(m, 1, 1, 1)


def shift(img, dy, dx):
    """``img`` moved by (dy, dx) with zeros entering: out[y, x] = img[y - dy, x - dx]."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    ys, yd = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    xs, xd = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    out[..., yd, xd] = img[..., ys, xs]
    return out


# --------------------------------------------------------------------------- shapes and views
@pytest.mark.parametrize("shape,v", [((1, 28, 28), 3), ((3, 32, 32), 3), ((3, 16, 16), 1), ((1, 10, 10), 5)])
def test_shapes(shape, v):
    aug = views(shape, num_views=v)
    assert aug.num_views == v
    x = torch.rand(7, *shape)
    out = aug(x)
    assert out.shape == (v, 7, *shape)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_presets_resolve_from_channels():
    assert views((1, 28, 28)).preset == "gray28"
    assert views((3, 32, 32)).preset == "rgb32"
    assert views((1, 28, 28)).use_randaugment is False  # gray28 has no RandAugment
    assert views((3, 32, 32)).use_randaugment is True
    assert views((3, 32, 32), randaugment=False).use_randaugment is False
    assert views((1, 28, 28)).cutout_size == 16
    assert views((3, 64, 64)).cutout_size == 32  # 16 px at 32 px, scaled


def test_rejects_feature_vectors():
    with pytest.raises(ComponentError, match="image instances"):
        views((10,))


def test_view0_is_weak_and_others_strong():
    torch.manual_seed(0)
    x = torch.ones(20, 1, 28, 28)
    out = views((1, 28, 28), flip=False, pad=0)(x)  # weak = identity here; strong = cutout
    assert torch.equal(out[0], x)
    for v in (1, 2):
        zeros = (out[v] == 0).flatten(1).sum(1)
        assert bool((zeros >= 8 * 8).all())  # every strong image got a hole (at least a quarter of 16x16)


def test_weak_view_never_gets_randaugment_or_cutout():
    torch.manual_seed(1)
    x = coded_images(16, c=3, h=16, w=16)
    out = views((3, 16, 16))(x)
    weak = out[0]
    for j in range(16):  # each weak image is a flip + shift of the input, nothing else
        ok = any(
            torch.equal(weak[j], shift(img, dy, dx))
            for img in (x[j], x[j].flip(-1))
            for dy in range(-4, 5)
            for dx in range(-4, 5)
        )
        assert ok, f"weak view {j} is not a flip + crop"
    assert not torch.equal(out[1], out[0])


# --------------------------------------------------------------------------- randomness
def test_seeded_determinism_and_seed_sensitivity():
    x = torch.rand(6, 3, 32, 32)
    aug = views((3, 32, 32))
    torch.manual_seed(123)
    a = aug(x)
    torch.manual_seed(123)
    b = aug(x)
    torch.manual_seed(124)
    c = aug(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_per_sample_randomness():
    torch.manual_seed(0)
    x = coded_images(32, c=3, h=16, w=16)  # 32 identical images
    out = views((3, 16, 16))(x)
    for v in range(3):
        distinct = {tuple(img.flatten().tolist()) for img in out[v]}
        assert len(distinct) > 8, f"view {v}: samples share their random parameters"


# --------------------------------------------------------------------------- crop / flip / cutout
def test_crop_stays_within_image_content():
    torch.manual_seed(3)
    x = coded_images(40, c=2, h=10, w=10)
    out = random_crop(x, pad=4)
    seen = set()
    for j in range(40):
        matches = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if torch.equal(out[j], shift(x[j], dy, dx))]
        assert len(matches) == 1, "a crop must be the image shifted by at most pad pixels, zero filled"
        seen.add(matches[0])
    assert len(seen) > 10  # offsets vary between samples
    # reflect padding brings in image pixels, never zeros
    refl = random_crop(x, pad=4, pad_mode="reflect")
    assert bool((refl > 0).all())
    assert set(refl.unique().tolist()) <= set(x.unique().tolist())


def test_crop_pad_zero_is_identity():
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(random_crop(x, 0), x)


def test_flip_only():
    torch.manual_seed(5)
    x = coded_images(64, c=1, h=6, w=6)
    out = views((1, 6, 6), pad=0, num_views=1)(x)[0]
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped | kept).all())
    assert 10 < int(flipped.sum()) < 54


def test_cutout_zeroes_a_square():
    torch.manual_seed(7)
    x = torch.ones(200, 3, 40, 40)
    out = cutout(x, 16)
    full = 0
    for img in out:
        hole = img[0] == 0
        assert torch.equal(hole, (img == 0).all(0))  # same hole in every channel
        rows = hole.any(1).nonzero().flatten()
        cols = hole.any(0).nonzero().flatten()
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        assert int(hole.sum()) == (r1 - r0) * (c1 - c0)  # an axis-aligned rectangle
        assert 8 <= r1 - r0 <= 16 and 8 <= c1 - c0 <= 16  # clipped only at the border
        full += int(hole.sum()) == 256
        assert bool((img[:, ~hole] == 1).all())  # nothing else touched
    assert full > 50  # most holes lie inside: a full 16x16 square


def test_cutout_value_option():
    torch.manual_seed(0)
    out = views((1, 20, 20), flip=False, pad=0, cutout_value=0.5, num_views=2)(torch.ones(4, 1, 20, 20))
    assert bool(((out[1] == 0.5).flatten(1).sum(1) > 0).all())
    assert not bool((out[1] == 0).any())


# --------------------------------------------------------------------------- RandAugment
def test_magnitude_table_matches_torchvision():
    mags = randaugment_magnitudes(9, 31, 32, 32)
    space = RandAugment._AUGMENTATION_SPACE
    for name, val in mags.items():
        ref = space[name][0](31, 32, 32)[9]
        if name.startswith("Translate"):
            ref = int(ref)
        assert math.isclose(val, float(ref), rel_tol=1e-6, abs_tol=1e-6), name
    assert set(RANDAUGMENT_OPS) == set(space)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_each_op_matches_torchvision(sign):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32)
    m = randaugment_magnitudes(9, 31, 32, 32)
    near = TF.InterpolationMode.NEAREST
    s = sign
    ref = {
        "Identity": x,
        "ShearX": TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0,
                            shear=[math.degrees(math.atan(s * m["ShearX"])), 0.0], center=[0, 0], interpolation=near),
        "ShearY": TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0,
                            shear=[0.0, math.degrees(math.atan(s * m["ShearY"]))], center=[0, 0], interpolation=near),
        "TranslateX": TF.affine(x, angle=0.0, translate=[int(s * m["TranslateX"]), 0], scale=1.0, shear=[0.0, 0.0]),
        "TranslateY": TF.affine(x, angle=0.0, translate=[0, int(s * m["TranslateY"])], scale=1.0, shear=[0.0, 0.0]),
        "Rotate": TF.rotate(x, s * m["Rotate"], interpolation=near),
        "Brightness": TF.adjust_brightness(x, 1 + s * m["Brightness"]),
        "Color": TF.adjust_saturation(x, 1 + s * m["Color"]),
        "Contrast": TF.adjust_contrast(x, 1 + s * m["Contrast"]),
        "Sharpness": TF.adjust_sharpness(x, 1 + s * m["Sharpness"]),
        "Posterize": TF.posterize(x, 7),
        "Solarize": TF.solarize(x, 0.7),
        "AutoContrast": TF.autocontrast(x),
        "Equalize": TF.equalize(x),
    }
    for k, name in enumerate(RANDAUGMENT_OPS):
        ours = apply_randaugment_ops(x, torch.tensor([k]), torch.tensor([s]), m)
        torch.testing.assert_close(ours, ref[name], atol=1e-5, rtol=0, msg=name)


def test_batched_ops_apply_per_image():
    """A batch with a different op per image equals each image processed alone."""
    torch.manual_seed(1)
    x = torch.rand(14, 3, 16, 16)
    m = randaugment_magnitudes(9, 31, 16, 16)
    op = torch.arange(14)
    sign = torch.tensor([1.0, -1.0] * 7)
    batched = apply_randaugment_ops(x, op, sign, m)
    for j in range(14):
        alone = apply_randaugment_ops(x[j: j + 1], op[j: j + 1], sign[j: j + 1], m)
        torch.testing.assert_close(batched[j: j + 1], alone, atol=1e-6, rtol=0)


def test_rand_augment_range_and_grey():
    torch.manual_seed(2)
    for c in (1, 3):
        out = rand_augment(torch.rand(20, c, 16, 16))
        assert out.shape == (20, c, 16, 16)
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_channels_last_input():
    torch.manual_seed(4)
    x = torch.rand(5, 3, 32, 32)
    aug = views((3, 32, 32))
    torch.manual_seed(9)
    a = aug(x)
    torch.manual_seed(9)
    b = aug(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b)


def test_view0_plain_leaves_the_pooling_view_unaugmented_and_the_strong_views_strong():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    aug = MILViews(MILViews.Config(num_views=3, view0="plain"), (1, 28, 28))
    out = aug(x)
    assert out.shape == (3, 6, 1, 28, 28)
    assert torch.equal(out[0], x)  # view 0 is the image itself
    for v in (1, 2):  # crop/flip + Cutout still applied to the strong views
        assert not torch.equal(out[v], x)
        assert (out[v] == 0).flatten(1).float().mean(1).min() > 0  # zeros of the Cutout hole (or crop padding)
    weak = MILViews(MILViews.Config(num_views=1), (1, 28, 28))
    assert not torch.equal(weak(x)[0], x)  # the default view 0 is still the weak view


def test_autocontrast_equals_torchvision_flat_images_included():
    from milzoo_vision.augment import _autocontrast

    torch.manual_seed(3)
    x = torch.rand(6, 3, 8, 8) * 0.5 + 0.2
    x[1] = 0.4          # a flat image: torchvision leaves it as it is
    x[2, 1] = 0.7       # one flat channel
    x[3] = x[3].clamp(0.3, 0.6)
    torch.testing.assert_close(_autocontrast(x), TF.autocontrast(x), atol=0, rtol=0)
    g = torch.rand(4, 1, 8, 8)
    g[0] = 0.0
    torch.testing.assert_close(_autocontrast(g), TF.autocontrast(g), atol=0, rtol=0)


def test_rand_augment_reads_nothing_back():
    """Every RandAugment op, run on a batch, makes no host synchronisation (no host data copied to the
    device, no boolean-mask assignment): a GPU step can queue it without waiting."""
    from milzoo.testing.dispatch import StepCounter

    torch.manual_seed(0)
    for c in (1, 3):
        x = torch.rand(28, c, 16, 16)
        op = torch.arange(28) % len(RANDAUGMENT_OPS)
        sign = torch.where(torch.rand(28) < 0.5, -1.0, 1.0)
        with StepCounter() as counter:
            apply_randaugment_ops(x, op, sign, randaugment_magnitudes(9, 31, 16, 16))
            rand_augment(x)
        assert not counter.syncs, (c, counter.syncs)
