"""The synthetic slide generator, and a tiny end-to-end training run on its output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milzoo.datasets.batch import collate_bags
from milzoo.builtin.encoders import IdentityEncoder
from milzoo.builtin.poolings import MaxPooling
from milzoo.model.mil import MILModel
from milzoo_wsi.dataset import SlidesSource
from milzoo_wsi.stores import list_slide_files, probe_slide, read_slide
from milzoo_wsi.synthetic import make_synthetic_slides
from milzoo_wsi.table import read_slide_table


@pytest.mark.parametrize("fmt", ["safetensors", "h5", "pt", "csv"])
def test_generator_writes_a_readable_set(mem_root, fmt):
    info = make_synthetic_slides(
        mem_root, n_slides=10, mean_patches=40, dim=8, seed=1, fmt=fmt, n_test=4, slides_per_patient=2
    )
    files = list_slide_files(info["features"])
    assert len(files) == 14 and {f.fmt for f in files.values()} == {fmt}
    table = read_slide_table(info["table"])
    assert table.class_names == ["normal", "tumor"] and table.splits.count("test") == 4
    assert table.patient_ids[:3] == ["patient_0000", "patient_0000", "patient_0001"]
    assert table.labels[:10].sum() == 4 and table.labels[10:].sum() == 2  # ~41 % in both splits
    sizes = []
    for sid, y in zip(table.slide_ids, table.labels):
        data = read_slide(files[sid])
        assert data.features.dtype == (torch.float32 if fmt == "csv" else torch.float16) and data.dim == 8
        sizes.append(data.num_patches)
        if fmt != "csv":
            assert data.coords.shape == (data.num_patches, 2) and (data.coords % 256 == 0).all()
            assert len({tuple(c) for c in data.coords.tolist()}) == data.num_patches  # distinct cells
            assert (data.inst_labels.sum() > 0) == bool(y)
    assert len(set(sizes)) > 5 and sum(sizes) == info["n_patches"]
    if fmt in ("safetensors", "h5"):
        assert probe_slide(files["slide_0000"]).itemsize == 2


def test_signal_is_in_the_tumour_patches(tmp_path):

    info = make_synthetic_slides(str(tmp_path), n_slides=6, mean_patches=400, dim=32, seed=0, signal=2.0,
                                 positive_fraction=0.5)
    tum, rest = [], []
    for sf in list_slide_files(info["features"]).values():
        d = read_slide(sf)
        x = d.features.float()
        tum.append(x[d.inst_labels == 1])
        rest.append(x[d.inst_labels == 0])
    shift = torch.cat(tum).mean(0) - torch.cat(rest).mean(0)
    assert float(shift.norm()) == pytest.approx(2.0, abs=0.5)


def test_tiny_training_on_synthetic_slides(tmp_path):
    """The data side feeds a model correctly: max pooling learns the (strong) tumour signal."""

    info = make_synthetic_slides(str(tmp_path), n_slides=24, mean_patches=30, dim=8, seed=2, signal=8.0,
                                 positive_fraction=0.5)
    src = SlidesSource(SlidesSource.Config(features=info["features"], table=info["table"], test_fraction=0))
    ds = src.load()["train"]
    torch.manual_seed(0)
    model = MILModel(IdentityEncoder(IdentityEncoder.Config(), (8,)), MaxPooling(MaxPooling.Config(), 8, 2),
                     class_names=ds.class_names)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    batch = collate_bags([ds[i] for i in range(len(ds))])

    def acc():
        return float((model.predict(batch).bag_probs.argmax(1) == batch.y).float().mean())

    before = acc()
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread start-up dominates on a busy machine
    try:
        for _ in range(60):
            out = model(batch)
            loss = torch.nn.functional.cross_entropy(out.bag_logits, batch.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.5 * losses[0]
    assert acc() >= 0.9 and acc() > before
    np.testing.assert_array_equal(batch.y.numpy(), ds.labels)


def test_generation_resumes_with_the_same_set(tmp_path):
    kw = dict(n_slides=5, mean_patches=20, dim=4, seed=7, n_test=2)
    info = make_synthetic_slides(str(tmp_path / "a"), **kw)
    ref = {sid: read_slide(sf).features for sid, sf in list_slide_files(info["features"]).items()}
    # an interrupted run: two slides missing and no table yet
    part = make_synthetic_slides(str(tmp_path / "b"), **kw)
    feats = tmp_path / "b" / "features"
    (feats / "slide_0001.safetensors").unlink()
    (feats / "slide_0005.safetensors").unlink()
    (tmp_path / "b" / "slides.csv").unlink()
    stamp = (feats / "slide_0002.safetensors").stat().st_mtime_ns
    again = make_synthetic_slides(str(tmp_path / "b"), **kw, skip_existing=True)
    assert (feats / "slide_0002.safetensors").stat().st_mtime_ns == stamp  # not written again
    got = {sid: read_slide(sf).features for sid, sf in list_slide_files(again["features"]).items()}
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    assert (tmp_path / "b" / "slides.csv").read_text() == (tmp_path / "a" / "slides.csv").read_text()
    assert again["n_patches"] == part["n_patches"] == info["n_patches"]
    assert not [p for p in feats.iterdir() if p.name.startswith(".")]  # no temporary files left
