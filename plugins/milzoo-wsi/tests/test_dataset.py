"""The slide table and the ``slides`` dataset source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from milzoo import registry
from milzoo.datasets.batch import collate_bags
from milzoo.errors import DataError
from milzoo_wsi import dataset as dsmod
from milzoo_wsi.dataset import SlideDataset, SlidesSource
from milzoo_wsi.table import read_slide_table, stratified_group_split


def _set(wr, root, ext="h5", n_slides=6, d=4, split=True, patients=True, labels=None):
    rows, feats = [], {}
    for i in range(n_slides):
        f, c = wr.feats(100 + i, 3 + i, d)
        wr.slide(f"{root}/feats/s{i}.{ext}", f, None if ext == "csv" else c)
        feats[f"s{i}"] = (f, c)
        row = {"slide_id": f"s{i}", "label": (labels or ["normal", "tumor"])[i % 2]}
        if patients:
            row["patient_id"] = f"p{i // 2}"
        if split:
            row["split"] = "test" if i >= n_slides - 2 else "train"
        rows.append(row)
    wr.table(f"{root}/slides.csv", rows)
    return feats


def _source(root, **kw):
    cls = registry.get_component("dataset", "slides")
    return cls(cls.Config(features=f"{root}/feats", table=f"{root}/slides.csv", **kw))


# --------------------------------------------------------------------------- table


def test_table_labels_and_classes(wr, mem_root):
    wr.table(f"{mem_root}/t.csv", [{"slide_id": "a", "label": "tumor"}, {"slide_id": "b", "label": "normal"}])
    t = read_slide_table(f"{mem_root}/t.csv")
    assert t.class_names == ["normal", "tumor"] and t.labels.tolist() == [1, 0]
    assert t.patient_ids is None and t.groups.tolist() == ["a", "b"]
    t = read_slide_table(f"{mem_root}/t.csv", class_names=["tumor", "normal"])
    assert t.labels.tolist() == [0, 1]
    wr.table(f"{mem_root}/i.csv", [{"slide_id": "a", "label": 2}, {"slide_id": "b", "label": 0}])
    # integer labels {0, 2} without class_names: class 1 would be empty, so refused (class_names decides)
    with pytest.raises(DataError, match=r"labels \{0, 2\}.*renumber the classes 0..k-1"):
        read_slide_table(f"{mem_root}/i.csv")
    wr.table(f"{mem_root}/j.csv", [{"slide_id": "a", "label": 1}, {"slide_id": "b", "label": 0}])
    t = read_slide_table(f"{mem_root}/j.csv")
    assert t.class_names == ["0", "1"] and t.labels.tolist() == [1, 0]
    assert read_slide_table(f"{mem_root}/i.csv", ["x", "y", "z"]).labels.tolist() == [2, 0]
    with pytest.raises(DataError, match=r"labels \['2'\] that are not among"):
        read_slide_table(f"{mem_root}/i.csv", ["x", "y"])


def test_table_problems_reported_together(wr, mem_root):
    wr.table(
        f"{mem_root}/t.csv",
        [
            {"slide_id": "a", "label": "x", "split": "train"},
            {"slide_id": "a", "label": "y", "split": "train"},
            {"slide_id": "b", "label": "", "split": "val"},
        ],
    )
    with pytest.raises(DataError) as err:
        read_slide_table(f"{mem_root}/t.csv")
    msg = str(err.value)
    assert "3 problem" in msg and "repeats line 2" in msg and "no label" in msg and "'val'" in msg
    wr.table(f"{mem_root}/c.csv", [{"slide": "a", "label": 1}])
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['slide_id'\]"):
        read_slide_table(f"{mem_root}/c.csv")
    with pytest.raises(DataError, match="does not exist"):
        read_slide_table(f"{mem_root}/none.csv")


# --------------------------------------------------------------------------- load


@pytest.mark.parametrize("ext", ["h5", "pt", "csv", "safetensors"])
def test_load_every_format(wr, mem_root, ext):
    feats = _set(wr, mem_root, ext)
    out = _source(mem_root).load()
    assert set(out) == {"train", "test"}
    tr, te = out["train"], out["test"]
    assert isinstance(tr, SlideDataset) and tr.cached and tr.num_classes == 2
    assert tr.bag_ids == ["s0", "s1", "s2", "s3"] and te.bag_ids == ["s4", "s5"]
    assert tr.labels.tolist() == [0, 1, 0, 1] and tr.groups.tolist() == ["p0", "p0", "p1", "p1"]
    assert tr.instance_shape == (4,)
    bag = te[1]
    f, c = feats["s5"]
    assert bag.x.dtype == torch.float32 and bag.y == 1 and bag.bag_id == "s5" and bag.index == 1
    assert bag.meta == {"slide_id": "s5"}
    torch.testing.assert_close(bag.x, torch.from_numpy(f).float())  # dtype auto: a small set is cached in fp32
    if ext == "csv":
        assert bag.coords is None
    else:
        assert torch.equal(bag.coords, torch.from_numpy(c))
    batch = collate_bags([tr[0], tr[3]])
    assert batch.x.shape == (2, 6, 4) and int(batch.mask.sum()) == 3 + 6
    assert (batch.coords is None) == (ext == "csv")


def test_cache_modes_and_dtypes(wr, tmp_path):
    feats = _set(wr, tmp_path, "safetensors")
    ref = torch.from_numpy(feats["s2"][0])
    lazy = _source(tmp_path, cache="auto", cache_max_gb=1e-9).load()["train"]  # does not fit -> read on access
    assert not lazy.cached
    torch.testing.assert_close(lazy[2].x, ref)  # exact float32 from the file
    full = _source(tmp_path, cache="memory", dtype="float32").load()["train"]
    assert full.cached and full.slide(2).features.dtype == torch.float32
    torch.testing.assert_close(full[2].x, ref)
    half = _source(tmp_path, bag_dtype="float16").load()["train"]
    assert half.slide(2).features.dtype == torch.float16 and half[2].x.dtype == torch.float16
    bf = _source(tmp_path, dtype="bfloat16", bag_dtype="bfloat16").load()["train"]
    assert bf.slide(2).features.dtype == torch.bfloat16 and bf[2].x.dtype == torch.bfloat16
    torch.testing.assert_close(bf[2].x.float(), ref, rtol=1e-2, atol=1e-2)  # 8 mantissa bits
    none = _source(tmp_path, cache="none").load()["train"]
    assert not none.cached and torch.equal(none[2].x, lazy[2].x)
    src = _source(tmp_path)
    src.load()  # dtype auto: the small set fits in float32
    assert src.cache_dtype == "float32" and src.cache_bytes_estimate == sum(n * 4 * 4 for n in range(3, 9))
    src = _source(tmp_path, cache_max_gb=sum(n * 4 * 3 for n in range(3, 9)) / 1e9)  # fits only in fp16
    tr = src.load()["train"]
    assert src.cache_dtype == "float16" and tr.cached and tr[2].x.dtype == torch.float32
    assert src.cache_bytes_estimate == sum(n * 4 * 2 for n in range(3, 9))  # from the headers, fp16
    src = _source(tmp_path, bag_dtype="float16")
    src.load()
    assert src.cache_dtype == "float16"  # float16 bags: a float32 cache would only be converted back
    src = _source(tmp_path, bag_dtype="bfloat16")
    assert src.load()["train"][2].x.dtype == torch.bfloat16 and src.cache_dtype == "bfloat16"


def test_properties_need_no_features(wr, tmp_path, monkeypatch):
    _set(wr, tmp_path, "h5")
    out = _source(tmp_path, cache="none").load()

    def boom(*a, **k):
        raise AssertionError("features were read")

    monkeypatch.setattr(dsmod, "read_slide", boom)
    tr = out["train"]
    assert len(tr) == 4 and tr.labels.tolist() == [0, 1, 0, 1] and tr.bag_ids[0] == "s0"
    assert tr.groups.tolist() == ["p0", "p0", "p1", "p1"]
    sub = tr.subset([1, 3])
    assert sub.labels.tolist() == [1, 1] and sub.bag_ids == ["s1", "s3"]
    with pytest.raises(AssertionError, match="features were read"):
        tr[0]


def test_missing_slides_listed_at_load(wr, tmp_path):
    _set(wr, tmp_path, "h5")
    (tmp_path / "feats" / "s1.h5").unlink()
    (tmp_path / "feats" / "s4.h5").unlink()
    with pytest.raises(DataError) as err:
        _source(tmp_path, cache="none").load()
    msg = str(err.value)
    assert "2 of the 6 slides" in msg and "'s1'" in msg and "'s4'" in msg and str(tmp_path / "feats") in msg
    with pytest.raises(DataError, match="format pt"):
        _source(tmp_path, format="pt").load()


def test_dimension_checked_on_every_slide(wr, tmp_path):
    _set(wr, tmp_path, "h5")
    wr.slide(f"{tmp_path}/feats/s3.h5", np.zeros((2, 9), np.float32))
    with pytest.raises(DataError) as err:
        _source(tmp_path, cache="none").load()
    msg = str(err.value)
    assert "'s3' has D=9" in msg and "expected 4" in msg and "first slide 's0'" in msg
    with pytest.raises(DataError, match="expected 9 features per patch .*`feature_dim`"):
        _source(tmp_path, feature_dim=9).load()


def test_dimension_mismatch_csv_found_when_reading(wr, tmp_path):
    _set(wr, tmp_path, "csv")
    wr.slide(f"{tmp_path}/feats/s2.csv", np.ones((3, 6), np.float32))
    with pytest.raises(DataError, match="'s2' has D=6"):
        _source(tmp_path).load()


def test_corrupted_slide_reported_at_load(wr, tmp_path):
    _set(wr, tmp_path, "safetensors")
    (tmp_path / "feats" / "s2.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxxx")
    (tmp_path / "feats" / "s5.safetensors").write_bytes(b"")
    with pytest.raises(DataError) as err:
        _source(tmp_path).load()
    msg = str(err.value)
    assert "2 of 6 slide files are unreadable" in msg and "'s2'" in msg and "s5.safetensors" in msg


def test_corrupted_pt_reported_when_caching(wr, tmp_path):
    _set(wr, tmp_path, "pt")
    raw = (tmp_path / "feats" / "s1.pt").read_bytes()
    (tmp_path / "feats" / "s1.pt").write_bytes(raw[:40])
    with pytest.raises(DataError, match="'s1'.*s1.pt"):
        _source(tmp_path, cache="memory").load()


def test_test_fraction_split_grouped_stratified(wr, tmp_path):
    rows = []
    for i in range(48):
        rows.append({"slide_id": f"s{i}", "label": ["normal", "tumor"][(i // 2) % 2], "patient_id": f"p{i // 2}"})
        wr.slide(f"{tmp_path}/feats/s{i}.h5", np.full((2, 3), i, np.float32))
    wr.table(f"{tmp_path}/slides.csv", rows)
    src = _source(tmp_path, split_seed=3)
    out = src.load()
    tr, te = out["train"], out["test"]
    assert len(te) == 12 and len(tr) == 36  # 25 % of the 24 patients, 2 slides each
    assert set(tr.groups.tolist()).isdisjoint(te.groups.tolist())
    assert te.labels.sum() == 6  # stratified: half tumour, like the whole set
    assert src.split_info["method"].startswith("stratified") and src.split_info["test"] == 12
    again = _source(tmp_path, split_seed=3).load()["test"].bag_ids
    other = _source(tmp_path, split_seed=4).load()["test"].bag_ids
    assert again == te.bag_ids and other != te.bag_ids
    # the published split reads back as a table with a split column and reproduces the split
    te.write_split(f"{tmp_path}/split.csv")
    back = SlidesSource(SlidesSource.Config(features=f"{tmp_path}/feats", table=f"{tmp_path}/split.csv"))
    out2 = back.load()
    assert out2["test"].bag_ids == te.bag_ids and back.split_info["method"] == "table column"
    assert _source(tmp_path, test_fraction=0).load().keys() == {"train"}


def test_split_without_patients_groups_by_slide():
    labels = np.array([0] * 8 + [1] * 8)
    mask = stratified_group_split(labels, np.arange(16).astype(str), 0.25, seed=0)
    assert mask.sum() == 4 and labels[mask].sum() == 2


def test_training_only_table(wr, tmp_path):
    _set(wr, tmp_path, "h5", split=False, patients=False)
    out = _source(tmp_path, test_fraction=0).load()
    assert list(out) == ["train"] and out["train"].groups.tolist() == [f"s{i}" for i in range(6)]


def test_dataset_pickles_for_worker_processes(wr, tmp_path):
    import pickle

    _set(wr, tmp_path, "safetensors")
    for cache in ("none", "memory"):
        ds = _source(tmp_path, cache=cache).load()["train"]
        back = pickle.loads(pickle.dumps(ds))
        assert torch.equal(back[1].x, ds[1].x) and back.bag_ids == ds.bag_ids
