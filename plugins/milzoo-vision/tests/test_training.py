"""End-to-end sanity: synthetic image bags -> mil_views -> cnn2 -> mean pooling learns."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from milzoo.datasets.batch import collate_bags
from milzoo.builtin.poolings import MeanPooling
from milzoo.model.mil import MILModel
from milzoo_vision.augment import MILViews
from milzoo_vision.datasets import ImageBagDataset, build_bags
from milzoo_vision.encoders import CNN2Encoder


def toy_images(n_per_class=40, k=3, size=12, seed=0):
    """Class c: noise plus a bright 4x4 block in a class-specific corner (class 0: no block)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), n_per_class)
    imgs = rng.integers(0, 60, size=(len(labels), 1, size, size)).astype(np.uint8)
    corners = {1: (1, 1), 2: (size - 5, size - 5)}
    for i, c in enumerate(labels):
        if c in corners:
            y, x = corners[int(c)]
            imgs[i, 0, y: y + 4, x: x + 4] = 255
    return torch.from_numpy(imgs), labels


def toy_bags(n_per_class=40, bag_size=8, num_key=2) -> ImageBagDataset:
    """Bags of :func:`toy_images` (class 0 is the background)."""
    images, labels = toy_images(n_per_class=n_per_class)
    idx, inst, y = build_bags(labels, np.arange(len(labels)), 3, bag_size=bag_size, num_key=num_key,
                              background_class=0, rng=np.random.default_rng(0))
    return ImageBagDataset(images, idx, inst, y, ["bg", "a", "b"], "toy-")


def cnn2_views_model(shape, dim: int, channels_last: bool = False) -> MILModel:
    """cnn2 + mean pooling over 3 classes, with mil_views (3 views)."""
    return MILModel(
        CNN2Encoder(CNN2Encoder.Config(dim=dim, normalize="half"), shape),
        MeanPooling(MeanPooling.Config(), dim, 3),
        augment=MILViews(MILViews.Config(pad=1, cutout_size=3), shape),
        channels_last=channels_last,
    )


def test_bags_through_views_and_cnn2_learn():
    torch.manual_seed(0)
    ds = toy_bags()
    model = cnn2_views_model(ds.instance_shape, 16, channels_last=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = np.random.default_rng(1).permutation(len(ds))
    losses = []
    model.train()
    for step in range(30):
        pick = order[(step * 4) % len(ds):][:4]
        batch = collate_bags([ds[int(i)] for i in pick])
        out = model(batch)
        views = out.extras["view_features"]
        assert views.shape == (3, int(batch.mask.sum()), 16)
        loss = F.cross_entropy(out.bag_logits, batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-6:]) < 0.6 * np.mean(losses[:6])
    # bag accuracy on all bags in eval mode (no augmentation)
    with torch.no_grad():
        out = model.predict(collate_bags([ds[i] for i in range(len(ds))]))
    acc = float((out.bag_logits.argmax(1) == torch.from_numpy(ds.labels)).float().mean())
    assert acc > 0.8


def test_float64_model_takes_uint8_image_bags_through_the_views():
    """train.precision = "fp64" doubles the model: float32 and uint8 images become float64, views and
    gradients too."""
    torch.manual_seed(0)
    ds = toy_bags(n_per_class=8, bag_size=4, num_key=1)
    model = cnn2_views_model(ds.instance_shape, 8).double()
    batch = collate_bags([ds[i] for i in range(3)])
    assert batch.x.dtype == torch.float32
    model.eval()
    as_uint8 = (batch.x[0] * 255).round().to(torch.uint8)  # what a device-resident split holds
    assert model.encode_instances(as_uint8).dtype == torch.float64
    model.train()
    out = model(batch)
    assert out.bag_logits.dtype == torch.float64 and out.extras["view_features"].dtype == torch.float64
    F.cross_entropy(out.bag_logits, batch.y).backward()
    assert all(p.grad.dtype == torch.float64 for p in model.parameters() if p.grad is not None)
    assert model.predict(batch).bag_probs.dtype == torch.float64
