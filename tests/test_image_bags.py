"""milzoo.datasets.images: image bags as index rows into one shared uint8 tensor, on the host and resident."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milzoo.datasets import IndexedImageBags, ResidentImageBags, collate_bags
from milzoo.datasets.resident import Moved


class _Targets(IndexedImageBags):
    """A float target per bag and no instance labels (the shape of milzoo-survival's regression bags)."""

    def __init__(self, images, index, targets):
        super().__init__(images, index, ["a", "b"], "t-")
        self._y = np.asarray(targets, dtype=np.float32)

    @property
    def labels(self):
        return self._y

    def label_of(self, i):
        return float(self._y[i])

    def resident_labels(self, moved):
        return moved(torch.from_numpy(self._y))


class _Classes(_Targets):
    def __init__(self, images, index, targets, inst):
        super().__init__(images, index, targets)
        self.inst_labels = np.asarray(inst, dtype=np.int64)


def images(n=12):
    return torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("with_instances", [False, True])
def test_a_resident_batch_equals_the_collated_bags(with_instances):
    index = np.array([[0, 3, 5], [1, 1, 2], [7, 8, 11], [4, 6, 9]])
    ds = (_Classes(images(), index, [0.5, 1.0, -2.0, 3.0], index % 2) if with_instances
          else _Targets(images(), index, [0.5, 1.0, -2.0, 3.0]))
    assert ds.has_instance_labels is with_instances and len(ds) == 4 and ds.bag_ids[2] == "t-2"
    rows = [2, 0, 3]
    want = collate_bags([ds.get_bag(r) for r in rows])
    got = ResidentImageBags(ds, Moved(torch.device("cpu"))).batch(rows, torch.tensor(rows))
    assert torch.equal(got.x, want.x) and torch.equal(got.mask, want.mask) and torch.equal(got.y, want.y)
    assert got.bag_ids == want.bag_ids == ["t-2", "t-0", "t-3"]
    assert (got.inst_y is None) is (not with_instances)
    if with_instances:
        assert torch.equal(got.inst_y, want.inst_y)
    assert got.x.dtype == torch.float32 and float(got.x.max()) <= 1.0
    assert torch.equal(ds.instance_matrix(), images()[np.unique(index)].float() / 255)


def test_refuses_what_is_not_a_uint8_image_tensor_or_no_bag():
    with pytest.raises(ValueError, match="uint8"):
        _Targets(images().float(), np.zeros((1, 2), dtype=np.int64), [0.0])
    with pytest.raises(ValueError, match="at least one bag"):
        _Targets(images(), np.zeros((0, 2), dtype=np.int64), [])
