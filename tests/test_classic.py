"""The classic MIL datasets (CSV layout) and the batch/padding machinery."""

from __future__ import annotations

import fsspec
import pytest
import torch

from milzoo.datasets.batch import Bag, collate_bags
from milzoo.builtin.classic import CLASSIC_FEATURES, ClassicDataset, read_classic_csv
from milzoo.errors import DataError


@pytest.mark.parametrize("name,bags,feats", [("musk1", 92, 166), ("musk2", 102, 166), ("elephant", 200, 230)])
def test_mil_package_csvs(name, bags, feats):
    ds = ClassicDataset(ClassicDataset.Config(dataset=name)).load()["all"]
    assert len(ds) == bags and ds.instance_shape == (feats,) and CLASSIC_FEATURES[name] == feats
    assert set(ds.labels.tolist()) == {0, 1} and ds.class_names == ["negative", "positive"]


def test_every_classic_dataset_loads():
    for name in CLASSIC_FEATURES:
        ds = ClassicDataset(ClassicDataset.Config(dataset=name)).load()["all"]
        assert ds.instance_shape == (CLASSIC_FEATURES[name],)


def test_label_column_leak_is_detected(tmp_path):
    # a MUSK-like file with the label repeated as a feature column: 167 features instead of 166
    rows = "\n".join(f"{i % 2},{i},{i % 2}," + ",".join(["1"] * 166) for i in range(4))
    (tmp_path / "leak.csv").write_text(rows + "\n")
    with pytest.raises(DataError, match="leaks"):
        read_classic_csv(str(tmp_path / "leak.csv"), 166)


def test_fsspec_url_and_bad_files(tmp_path):
    with fsspec.open("memory://toy/a.csv", "w") as fh:
        fh.write("1,1,0.5,0.2\n1,1,0.1,0.3\n0,2,0.0,0.0\n")
    ds = ClassicDataset(ClassicDataset.Config(path="memory://toy/a.csv")).load()["all"]
    assert len(ds) == 2 and ds[0].x.shape == (2, 2) and ds[0].y == 1 and ds[1].y == 0
    with pytest.raises(DataError, match="does not exist"):
        read_classic_csv(str(tmp_path / "none.csv"))
    (tmp_path / "text.csv").write_text("a,b,c\n")
    with pytest.raises(DataError, match="not a numeric CSV"):
        read_classic_csv(str(tmp_path / "text.csv"))


def test_collate_pads_and_masks():
    bags = [Bag(torch.ones(2, 3), 1, "a", inst_y=torch.tensor([1, 0])), Bag(torch.full((4, 3), 2.0), 0, "b")]
    b = collate_bags(bags)
    assert b.x.shape == (2, 4, 3) and b.mask.tolist() == [[True, True, False, False], [True] * 4]
    assert b.x[0, 2:].abs().sum() == 0 and b.inst_y.tolist() == [[1, 0, -1, -1], [-1] * 4]
    one = b.select(0)
    assert one.x.shape == (1, 2, 3) and one.bag_ids == ["a"]


def test_unpadded_batches_skip_copies_and_training_leaves_bags_intact():
    from milzoo.model.build import build_components

    one = Bag(torch.randn(5, 4), 1)
    b = collate_bags([one])
    assert b.x.data_ptr() == one.x.data_ptr() and b.mask.all()  # a view: no copy of a whole-slide bag
    same = collate_bags([Bag(torch.randn(3, 4), 0), Bag(torch.randn(3, 4), 1)])
    assert same.mask.all() and same.x.shape == (2, 3, 4)

    torch.manual_seed(0)
    model = build_components({"name": "identity"}, {"name": "abmil"}, (4,), 2).train()
    before = one.x.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(b)
    torch.nn.functional.cross_entropy(out.bag_logits, b.y).backward()
    opt.step()
    assert torch.equal(one.x, before)  # the dataset's tensor was neither written nor stepped
    # the copy-free path gives the padded path's result
    padded = collate_bags([one, Bag(torch.randn(7, 4), 0)])
    model.eval()
    assert torch.allclose(model(b).bag_logits[0], model(padded).bag_logits[0], atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "max", "abmil"])
def test_padding_never_changes_a_bag(pooling):
    from milzoo.model.build import build_components

    torch.manual_seed(0)
    model = build_components({"name": "mlp", "dims": [8]}, {"name": pooling}, (4,), 3).eval()
    bags = [Bag(torch.randn(n, 4), 0) for n in (1, 6, 3)]
    together = model(collate_bags(bags))
    for i, bag in enumerate(bags):
        alone = model(collate_bags([bag]))
        assert torch.allclose(together.bag_logits[i], alone.bag_logits[0], atol=1e-6)
        if together.attention is not None:
            n = len(bag)
            assert torch.allclose(together.attention[i, :n], alone.attention[0], atol=1e-6)
            assert together.attention[i, n:].abs().sum() == 0
