"""Tests of the file readers and the synthetic bag construction, on small generated files."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from milzoo import registry
from milzoo.errors import DataError
from milzoo_vision import readers
from milzoo_vision.datasets import (
    CIFAR10Bags,
    CIFAR100Bags,
    FashionMNISTBags,
    ImageBagDataset,
    SVHNBags,
    build_bags,
)

# train: 80 images of class 0, 12 of every other class; test: 70 of class 0, 6 of the others
TRAIN_COUNTS = [80] + [12] * 9
TEST_COUNTS = [70] + [6] * 9


def make_split(counts, shape, seed):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
    return images, labels


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    tr_x, tr_y = make_split(TRAIN_COUNTS, (28, 28), 0)
    te_x, te_y = make_split(TEST_COUNTS, (28, 28), 1)
    write_idx(root / "train-images-idx3-ubyte", tr_x, gz=False)
    write_idx(root / "train-labels-idx1-ubyte", tr_y, gz=False)
    write_idx(root / "t10k-images-idx3-ubyte", te_x, gz=True)  # mixed raw / gz is fine
    write_idx(root / "t10k-labels-idx1-ubyte", te_y, gz=True)
    return root, (tr_x, tr_y, te_x, te_y)


def load_fmnist(root, **opts):
    return FashionMNISTBags(FashionMNISTBags.Config(root=str(root), **opts)).load()


def test_registered_through_the_entry_point():
    for name, cls in [("fmnist_bags", FashionMNISTBags), ("svhn_bags", SVHNBags),
                      ("cifar10_bags", CIFAR10Bags), ("cifar100_bags", CIFAR100Bags)]:
        assert registry.get_component("dataset", name) is cls
    assert registry.get_component("augment", "mil_views").__name__ == "MILViews"


# --------------------------------------------------------------------------- readers
def test_idx_reader_raw_and_gz(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr, gz=False)
    write_idx(tmp_path / "b", arr, gz=True)
    assert np.array_equal(readers.read_idx(tmp_path / "a"), arr)
    assert np.array_equal(readers.read_idx(tmp_path / "b.gz"), arr)
    (tmp_path / "c").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        readers.read_idx(tmp_path / "c")


def test_fmnist_torchvision_layout_with_gz(tmp_path, fmnist_root):
    _, (tr_x, tr_y, te_x, te_y) = fmnist_root
    raw = tmp_path / "FashionMNIST" / "raw"
    for name, arr in [("train-images-idx3-ubyte", tr_x), ("train-labels-idx1-ubyte", tr_y),
                      ("t10k-images-idx3-ubyte", te_x), ("t10k-labels-idx1-ubyte", te_y)]:
        write_idx(raw / name, arr, gz=True)
    data = readers.load_fmnist(str(tmp_path), download=False)
    assert data.location == str(raw)
    assert data.train_x.shape == (len(tr_y), 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert np.array_equal(data.train_x[:, 0].numpy(), tr_x)
    assert np.array_equal(data.test_y, te_y.astype(np.int64))
    assert data.class_names[0] == "T-shirt/top"


def test_missing_files_give_a_clear_error(tmp_path):
    for cls in (FashionMNISTBags, CIFAR10Bags, CIFAR100Bags):
        with pytest.raises(DataError) as info:
            cls(cls.Config(root=str(tmp_path))).load()
        msg = str(info.value)
        assert str(tmp_path) in msg and "download = true" in msg and "root" in msg


# --------------------------------------------------------------------------- bag construction
def test_bag_invariants(fmnist_root):
    root, (tr_x, tr_y, te_x, te_y) = fmnist_root
    splits = load_fmnist(root)
    assert set(splits) == {"train", "test", "test_instances"}
    train = splits["train"]
    assert train.class_names[:2] == ["T-shirt/top", "Trouser"]
    assert train.instance_shape == (1, 28, 28)
    # bags per class = floor(#class / 5), class 0 included
    assert np.bincount(train.labels).tolist() == [80 // 5] + [12 // 5] * 9
    key_use: dict[int, int] = {}
    for i in range(len(train)):
        bag = train[i]
        assert bag.x.shape == (64, 1, 28, 28) and bag.x.dtype == torch.float32
        assert bag.index == i
        idx = train.index[i]
        assert len(set(idx.tolist())) == 64  # no image twice in a bag
        # pixels and instance labels are those of the images the bag points at
        torch.testing.assert_close(bag.x[:, 0], torch.from_numpy(tr_x[idx]).float() / 255)
        assert bag.inst_y.tolist() == tr_y[idx].astype(int).tolist()
        counts = np.bincount(bag.inst_y.numpy(), minlength=10)
        if bag.y == 0:
            assert counts[0] == 64
        else:
            assert counts[bag.y] == 5 and counts[0] == 59 and counts.sum() == 64
        for j in idx[tr_y[idx] != 0]:
            key_use[int(j)] = key_use.get(int(j), 0) + 1
    assert max(key_use.values()) == 1  # key instances never reused
    assert len(key_use) == 9 * 10  # 2 bags x 5 keys for each of the 9 classes
    # instance order is shuffled inside bags (keys are not always first)
    first_is_key = [int(train.inst_labels[i, 0] != 0) for i in range(len(train)) if train.labels[i] != 0]
    assert sum(first_is_key) < len(first_is_key)


def test_class0_bags_do_not_reuse_their_keys():
    labels = np.array([0] * 30 + [1] * 10)
    # without background every instance is a key: the class-0 bags must partition the class-0 images
    idx, _, y = build_bags(labels, np.arange(40), 2, bag_size=5, num_key=5, background_class=0,
                           rng=np.random.default_rng(0))
    assert np.bincount(y).tolist() == [6, 2]
    class0 = idx[y == 0].flatten()
    assert sorted(class0.tolist()) == list(range(30))
    # with background, a class-0 bag never draws its own keys again
    for seed in range(5):
        idx, _, y = build_bags(labels, np.arange(40), 2, bag_size=28, num_key=5, background_class=0,
                               rng=np.random.default_rng(seed))
        for row in idx:
            assert len(set(row.tolist())) == 28


def test_test_split_and_singletons(fmnist_root):
    root, (_, _, te_x, te_y) = fmnist_root
    splits = load_fmnist(root)
    test = splits["test"]
    assert np.bincount(test.labels).tolist() == [70 // 5] + [1] * 9
    single = splits["test_instances"]
    assert len(single) == len(te_y)
    for i in (0, 17, len(te_y) - 1):
        bag = single[i]
        assert bag.x.shape == (1, 1, 28, 28)
        assert bag.y == int(te_y[i]) and bag.inst_y.tolist() == [int(te_y[i])]
        torch.testing.assert_close(bag.x[0, 0], torch.from_numpy(te_x[i]).float() / 255)
    assert single.labels.tolist() == te_y.astype(int).tolist()
    assert single.has_instance_labels


def test_seeding(fmnist_root):
    root, _ = fmnist_root
    a = load_fmnist(root, seed=3)["train"]
    b = load_fmnist(root, seed=3)["train"]
    c = load_fmnist(root, seed=4)["train"]
    assert np.array_equal(a.index, b.index)
    assert not np.array_equal(a.index, c.index)


def test_options(fmnist_root):
    root, (_, tr_y, _, _) = fmnist_root
    small = load_fmnist(root, bag_size=10, num_key=2, max_bags_per_class=3)
    assert small["train"].index.shape == (30, 10)
    assert np.bincount(small["test"].labels).tolist() == [3] * 10
    bg = load_fmnist(root, bag_size=8, num_key=3, background_class=1)["train"]
    for i in range(len(bg)):
        c = int(bg.labels[i])
        counts = np.bincount(bg.inst_labels[i], minlength=10)
        assert counts[c] >= 3 and counts[1] == (8 if c == 1 else 5)
    with pytest.raises(ValidationError):
        FashionMNISTBags.Config(bag_size=4, num_key=5)
    with pytest.raises(DataError, match="background_class"):
        load_fmnist(root, background_class=10)


def test_instance_bags(fmnist_root):
    root, (_, tr_y, _, _) = fmnist_root
    splits = load_fmnist(root, instance_bags=True)
    train = splits["train"]
    # the supervised ceiling sees exactly the images of the training bags the MIL recipes build
    bag_images = np.unique(load_fmnist(root)["train"].index)
    assert train.index[:, 0].tolist() == bag_images.tolist()
    assert 0 < len(train) < len(tr_y)  # class-0 images not drawn as background are in no bag
    assert train.labels.tolist() == tr_y[bag_images].astype(int).tolist()
    assert train[5].inst_y.tolist() == [int(tr_y[bag_images[5]])]
    assert len(splits["test"]) == 14 + 9  # the test bags are unchanged


def test_validation_split(fmnist_root):
    root, (_, tr_y, _, _) = fmnist_root
    splits = load_fmnist(root, val_fraction=0.5, bag_size=16)
    assert set(splits) == {"train", "val", "val_instances", "test", "test_instances"}
    val_images = set(splits["val_instances"].index[:, 0].tolist())
    train_images = set(splits["train"].index.flatten().tolist())
    assert val_images and not (val_images & train_images)
    assert set(splits["val"].index.flatten().tolist()) <= val_images
    # stratified: half of every class
    val_counts = np.bincount(tr_y[sorted(val_images)], minlength=10)
    assert val_counts.tolist() == [40] + [6] * 9
    assert np.bincount(splits["val"].labels).tolist() == [8] + [1] * 9
    # with instance_bags the training singletons exclude the validation images too
    inst = load_fmnist(root, val_fraction=0.5, instance_bags=True)
    assert not (set(inst["train"].index[:, 0].tolist()) & set(inst["val_instances"].index[:, 0].tolist()))
    assert len(inst["val_instances"]) == len(val_images)
    assert set(inst["train"].index[:, 0].tolist()) == set(
        load_fmnist(root, val_fraction=0.5)["train"].index.flatten().tolist())


def test_image_bag_dataset_shares_the_image_tensor(fmnist_root):
    root, _ = fmnist_root
    splits = load_fmnist(root, val_fraction=0.25, bag_size=16)
    assert splits["train"].images is splits["val"].images is splits["val_instances"].images
    assert splits["test"].images is splits["test_instances"].images
    assert isinstance(splits["train"], ImageBagDataset)
    sub = splits["train"].subset([2, 0])
    assert sub[0].index == 2 and sub[0].y == splits["train"][2].y


# --------------------------------------------------------------------------- CIFAR / SVHN files
def write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def test_cifar10_pickle_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    tr_x, tr_y = make_split([20] + [5] * 9, (3, 32, 32), 2)
    tr_x[0] = 0
    tr_x[0, 0] = 255  # a pure red image: plane order R, G, B
    te_x, te_y = make_split([10] + [5] * 9, (3, 32, 32), 3)
    parts = np.array_split(np.arange(len(tr_y)), 5)
    for i, part in enumerate(parts, start=1):
        batch = {"data": tr_x[part].reshape(len(part), -1), "labels": tr_y[part].tolist()}
        if i == 2:
            batch = {k.encode(): v for k, v in batch.items()}  # bytes keys, as in python-2 pickles
        write_pickle(d / f"data_batch_{i}", batch)
    write_pickle(d / "test_batch", {"data": te_x.reshape(len(te_y), -1), "labels": te_y.tolist()})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_pickle(d / "batches.meta", {"label_names": names})
    splits = CIFAR10Bags(CIFAR10Bags.Config(root=str(tmp_path), bag_size=12)).load()
    train = splits["train"]
    assert train.class_names == names and train.instance_shape == (3, 32, 32)
    assert np.bincount(train.labels).tolist() == [4] + [1] * 9
    assert torch.equal(train.images, torch.from_numpy(tr_x))
    red = splits["train"].images[0].float() / 255
    assert red[0].min() == 1 and red[1:].max() == 0
    assert len(splits["test_instances"]) == len(te_y)


def test_cifar100_pickle_batches(tmp_path):
    d = tmp_path / "cifar-100-python"
    counts = [30, 5, 5, 10] + [0] * 96
    tr_x, tr_y = make_split(counts, (3, 32, 32), 4)
    te_x, te_y = make_split([10, 5] + [0] * 98, (3, 32, 32), 5)
    write_pickle(d / "train", {"data": tr_x.reshape(len(tr_y), -1), "fine_labels": tr_y.tolist(),
                               "coarse_labels": [0] * len(tr_y)})
    write_pickle(d / "test", {"data": te_x.reshape(len(te_y), -1), "fine_labels": te_y.tolist(),
                              "coarse_labels": [0] * len(te_y)})
    names = ["apple"] + [f"class{i}" for i in range(1, 100)]
    write_pickle(d / "meta", {"fine_label_names": names, "coarse_label_names": ["x"] * 20})
    splits = CIFAR100Bags(CIFAR100Bags.Config(root=str(d), bag_size=10)).load()  # root may be the folder itself
    train = splits["train"]
    assert train.num_classes == 100 and train.class_names[0] == "apple"
    assert np.bincount(train.labels, minlength=4)[:4].tolist() == [6, 1, 1, 2]
    assert np.bincount(splits["test"].labels).tolist() == [2, 1]


def test_svhn_mat_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io", reason="SVHN .mat files need scipy")
    for split, counts, seed in (("train", [10] + [5] * 9, 6), ("test", [10] + [5] * 9, 7)):
        x, y = make_split(counts, (3, 32, 32), seed)
        x[0] = 0
        x[0, 2, 0, 0] = 200  # blue, top-left pixel
        mat_y = np.where(y == 0, 10, y).reshape(-1, 1)  # the files label digit 0 as 10
        scipy_io.savemat(str(tmp_path / f"{split}_32x32.mat"), {"X": x.transpose(2, 3, 1, 0), "y": mat_y})
        if split == "train":
            train_x, train_y = x, y
    splits = SVHNBags(SVHNBags.Config(root=str(tmp_path), bag_size=8)).load()
    train = splits["train"]
    assert train.class_names == [str(i) for i in range(10)]
    assert torch.equal(train.images, torch.from_numpy(train_x))
    assert np.bincount(train.labels).tolist() == [2] + [1] * 9
    inst = SVHNBags(SVHNBags.Config(root=str(tmp_path), instance_bags=True)).load()["train"]
    assert inst.labels.tolist() == train_y.astype(int).tolist()
    assert inst.images[0, 2, 0, 0] == 200 and int(inst.images[0].sum()) == 200
