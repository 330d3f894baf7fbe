"""Patients (CLAM's case_id, patient_id, a named column), splits grouped by patient, bags per patient,
slide ids with a whole-slide extension, and the patching attributes TRIDENT and CLAM write."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
import torch

from milzoo import registry
from milzoo.datasets import BagListDataset, Bag
from milzoo.datasets.protocols import carve_validation, make_folds
from milzoo.errors import DataError, MilzooWarning, UserError
from milzoo.recipe.schema import ProtocolConfig
from milzoo_wsi.convert import convert_features
from milzoo_wsi.stores import patching_from_attrs, probe_slide, slide_file, slide_id_stem
from milzoo_wsi.table import read_slide_table


def _source(root, table="slides.csv", **kw):
    cls = registry.get_component("dataset", "slides")
    return cls(cls.Config(features=f"{root}/feats", table=f"{root}/{table}", **kw))


def _clam_set(wr, root, n_patients=8, per_patient=3, ext="h5", id_suffix="", split=None):
    """A CLAM-format table ``case_id,slide_id,label``: several slides per patient, one label per patient."""
    rows = []
    for p in range(n_patients):
        case = f"TCGA-AA-{p:04d}"
        for k in range(per_patient):
            sid = f"{case}-01Z-00-DX{k + 1}"
            f, c = wr.feats(10 * p + k, 3 + k, 4)
            wr.slide(f"{root}/feats/{sid}.{ext}", f, c)
            row = {"case_id": case, "slide_id": sid + id_suffix, "label": ["LUAD", "LUSC"][p % 2]}
            if split is not None:
                row["split"] = split(p, k)
            rows.append(row)
    wr.table(f"{root}/slides.csv", rows)
    return rows


# --------------------------------------------------------------------------- patients and splits


def test_clam_case_id_groups_the_test_split(wr, tmp_path):
    """The issue: case_id was ignored and 6 of 8 multi-slide patients landed on both sides of the split."""
    _clam_set(wr, tmp_path)
    src = _source(tmp_path)
    out = src.load()
    tr, te = out["train"], out["test"]
    # no patient (the barcode's first 12 characters) has slides on both sides
    assert {b[:12] for b in tr.bag_ids}.isdisjoint(b[:12] for b in te.bag_ids)
    assert [g for g in tr.groups.tolist()] == [b[:12] for b in tr.bag_ids]  # the patient (case_id), not the slide
    assert set(tr.groups.tolist()).isdisjoint(te.groups.tolist())
    assert len(set(te.groups.tolist())) == 2 and len(te) == 6  # 25% of the 8 patients, all their slides
    assert src.split_info["grouped_by"] == "case_id" and "case_id" in src.split_info["method"]
    assert src.data_info["patient_column"] == "case_id" and src.data_info["patients"] == 8
    # the cross-validation folds of the training slides keep patients together as well
    folds = make_folds(ProtocolConfig(kind="cv_ensemble", folds=3), out, 0)
    for f in folds:
        assert set(f.train.groups.tolist()).isdisjoint(f.val.groups.tolist())
        assert set(f.train.groups.tolist()).isdisjoint(f.evals["test"].groups.tolist())


def test_the_published_split_keeps_the_patient_column(wr, tmp_path):
    _clam_set(wr, tmp_path)
    src = _source(tmp_path)
    te = src.load()["test"]
    src.write_split(f"{tmp_path}/split.csv")
    header = (tmp_path / "split.csv").read_text().splitlines()[0]
    assert header == "slide_id,label,case_id,split"
    back = _source(tmp_path, table="split.csv")
    assert back.load()["test"].bag_ids == te.bag_ids and back.split_info["method"] == "table column"


def test_official_split_with_a_patient_on_both_sides_is_refused(wr, tmp_path):
    # patients 1 and 4 have their third slide in the test split, the others in train
    _clam_set(wr, tmp_path, split=lambda p, k: "test" if p in (6, 7) or (p in (1, 4) and k == 2) else "train")
    with pytest.raises(DataError) as err:
        _source(tmp_path).load()
    msg = str(err.value)
    assert "2 patient(s)" in msg and "TCGA-AA-0001" in msg and "TCGA-AA-0004" in msg and "case_id" in msg
    assert "TCGA-AA-0001-01Z-00-DX3" in msg  # the slide on the other side is named
    assert "remove the split column" in msg and "\n" not in msg
    # a split that keeps patients whole loads
    _clam_set(wr, tmp_path, split=lambda p, k: "test" if p in (6, 7) else "train")
    out = _source(tmp_path).load()
    assert len(out["test"]) == 6


def test_a_named_patient_column_and_slide_id(wr, tmp_path):
    rows = _clam_set(wr, tmp_path, n_patients=4, per_patient=2)
    wr.table(f"{tmp_path}/subj.csv", [{"subject": r["case_id"], "slide_id": r["slide_id"], "label": r["label"]}
                                      for r in rows])
    src = _source(tmp_path, table="subj.csv", patient_column="subject", test_fraction=0.5)
    te = src.load()["test"]
    assert len(te) == 4 and len(set(te.groups.tolist())) == 2
    with pytest.raises(DataError, match=r"no column 'patient'.*\['subject', 'slide_id', 'label'\]"):
        _source(tmp_path, table="subj.csv", patient_column="patient").load()
    # every slide its own patient, said on purpose: no TCGA warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        src = _source(tmp_path, table="subj.csv", patient_column="slide_id")
        assert src.load()["train"].groups.tolist() == src.load()["train"].bag_ids


def test_no_patient_column_names_the_columns_looked_for(wr, tmp_path):
    rows = _clam_set(wr, tmp_path, n_patients=4, per_patient=2)
    wr.table(f"{tmp_path}/bare.csv", [{"slide_id": r["slide_id"], "label": r["label"]} for r in rows])
    with pytest.warns(MilzooWarning) as rec:
        src = _source(tmp_path, table="bare.csv", test_fraction=0.5)
        src.load()
    msg = " ".join(str(w.message) for w in rec)
    assert "looked for patient_id, case_id" in msg and "4 TCGA patients have several slides" in msg
    assert "TCGA-AA-0000 (2 slides)" in msg and "`patient_column`" in msg
    assert "grouped by slide_id" not in src.split_info["method"]
    assert "looked for patient_id, case_id" in src.split_info["method"]
    assert src.split_info["patient_columns_looked_for"] == ["patient_id", "case_id"]


def test_patient_id_and_case_id_that_disagree(wr, tmp_path):
    wr.table(f"{tmp_path}/t.csv", [
        {"slide_id": "a", "label": 0, "patient_id": "p1", "case_id": "c1"},
        {"slide_id": "b", "label": 1, "patient_id": "p1", "case_id": "c2"},
    ])
    with pytest.raises(DataError, match="both patient_id and case_id.*`patient_column`"):
        read_slide_table(f"{tmp_path}/t.csv")
    assert read_slide_table(f"{tmp_path}/t.csv", patient_column="case_id").patient_ids == ["c1", "c2"]
    wr.table(f"{tmp_path}/u.csv", [
        {"slide_id": "a", "label": 0, "patient_id": "p1", "case_id": "c1"},
        {"slide_id": "b", "label": 1, "patient_id": "p1", "case_id": "c1"},
    ])
    t = read_slide_table(f"{tmp_path}/u.csv")  # the same grouping under two names: patient_id is used
    assert t.patient_column == "patient_id" and t.patient_ids == ["p1", "p1"]


def test_repeated_slides(wr, tmp_path):
    wr.table(f"{tmp_path}/t.csv", [
        {"slide_id": "a", "label": 0, "case_id": "p"}, {"slide_id": "b", "label": 1, "case_id": "q"},
        {"slide_id": "a", "label": 0, "case_id": "p"},
    ])
    with pytest.warns(MilzooWarning, match=r"lists 1 slide\(s\) twice.*'a' \(lines 2 and 4\)"):
        t = read_slide_table(f"{tmp_path}/t.csv")
    assert t.slide_ids == ["a", "b"]
    wr.table(f"{tmp_path}/u.csv", [
        {"slide_id": "a", "label": 0, "case_id": "p"}, {"slide_id": "b", "label": 1, "case_id": "q"},
        {"slide_id": "a", "label": 0, "case_id": "q"},
    ])
    with pytest.raises(DataError, match="line 4: slide 'a' repeats line 2 with another case_id"):
        read_slide_table(f"{tmp_path}/u.csv")


# --------------------------------------------------------------------------- slide ids with extensions


def test_slide_id_stem():
    assert slide_id_stem("TCGA-05-4244-01Z-00-DX1.svs") == "TCGA-05-4244-01Z-00-DX1"
    assert slide_id_stem("a.SVS") == "a" and slide_id_stem("b.ome.tiff") == "b" and slide_id_stem("c.mrxs") == "c"
    assert slide_id_stem("d.h5") == "d" and slide_id_stem("e") == "e" and slide_id_stem("v1.2") == "v1.2"
    assert slide_id_stem(".svs") == ".svs"


@pytest.mark.parametrize("suffix", [".svs", ".SVS", ".ndpi", ".tiff", ".mrxs", ""])
def test_slide_ids_with_a_wsi_extension_find_their_features(wr, tmp_path, suffix):
    """CLAM tables write TCGA-XX.svs; the features are TCGA-XX.h5."""
    _clam_set(wr, tmp_path, n_patients=4, per_patient=2, id_suffix=suffix)
    tr = _source(tmp_path, test_fraction=0).load()["train"]
    assert len(tr) == 8 and tr.bag_ids[0] == "TCGA-AA-0000-01Z-00-DX1" + suffix  # the table's id
    assert tr[0].x.shape == (3, 4)


def test_missing_slides_show_both_names_and_a_hint(wr, tmp_path):
    rows = _clam_set(wr, tmp_path, n_patients=3, per_patient=2)
    rows = [{**r, "slide_id": r["slide_id"].lower() + ".svs"} for r in rows]  # the case differs
    wr.table(f"{tmp_path}/lower.csv", rows)
    with pytest.raises(DataError) as err:
        _source(tmp_path, table="lower.csv").load()
    msg = str(err.value)
    assert "6 of the 6 slides" in msg and "'tcga-aa-0000-01z-00-dx1.svs'" in msg  # count and the table's ids
    assert "'TCGA-AA-0000-01Z-00-DX1.h5'" in msg  # a feature file's name
    assert "upper and lower case" in msg and "'TCGA-XX.svs' finds 'TCGA-XX.h5'" in msg and "\n" not in msg
    wr.table(f"{tmp_path}/short.csv", [{**r, "slide_id": r["case_id"]} for r in _clam_set(wr, tmp_path, 2, 1)])
    with pytest.raises(DataError, match="only part of a file name"):
        _source(tmp_path, table="short.csv").load()


def test_two_ids_for_one_file_are_refused(wr, tmp_path):
    wr.slide(f"{tmp_path}/feats/a.h5", *wr.feats(0, 3, 4))
    wr.slide(f"{tmp_path}/feats/b.h5", *wr.feats(1, 3, 4))
    wr.table(f"{tmp_path}/slides.csv", [{"slide_id": "a.svs", "label": 0}, {"slide_id": "a.ndpi", "label": 1},
                                        {"slide_id": "b", "label": 1}])
    with pytest.raises(DataError, match="same feature file.*'a.svs' and 'a.ndpi'"):
        _source(tmp_path, test_fraction=0).load()


# --------------------------------------------------------------------------- one bag per patient


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_one_bag_per_patient(wr, tmp_path, cache):
    _clam_set(wr, tmp_path, n_patients=8, per_patient=3)
    src = _source(tmp_path, bag="patient", cache=cache)
    out = src.load()
    tr, te = out["train"], out["test"]
    assert len(tr) == 6 and len(te) == 2
    assert tr.bag_ids == tr.groups.tolist() and tr.bag_ids[0].startswith("TCGA-AA-")
    bag = tr[0]
    pid = tr.bag_ids[0]
    assert bag.x.shape == (3 + 4 + 5, 4) and bag.coords.shape == (12, 2)
    p = int(pid[-4:])
    np.testing.assert_array_equal(bag.x[3:7].numpy(), wr.feats(10 * p + 1, 4, 4)[0])  # the second slide
    assert bag.meta == {"patient_id": pid, "slide_ids": [f"{pid}-01Z-00-DX{k}" for k in (1, 2, 3)],
                        "slide_patches": [3, 4, 5]}
    assert bag.y == p % 2
    assert src.data_info["bag"] == "patient" and src.data_info["bags"] == 8 and src.data_info["slides"] == 24
    from milzoo.datasets.protocols import dataset_info

    assert dataset_info(make_folds(ProtocolConfig(kind="cv", folds=2), out, 0)) == src.data_info
    assert len(src.split_rows) == 24  # the published split lists slides
    folds = make_folds(ProtocolConfig(kind="cv_ensemble", folds=3), out, 0)
    assert sum(len(f.val) for f in folds) == 6
    if cache == "memory":
        res = tr.to_resident(torch.device("cpu"), lambda t: t)
        b = res.batch([0], torch.tensor([0]))
        assert b.meta[0] == bag.meta and torch.equal(b.x[0], bag.x)


def test_bag_per_patient_needs_patients_with_one_label(wr, tmp_path):
    rows = _clam_set(wr, tmp_path, n_patients=4, per_patient=2)
    rows[1]["label"] = "LUSC"  # TCGA-AA-0000: LUAD and LUSC
    wr.table(f"{tmp_path}/mixed.csv", rows)
    with pytest.raises(DataError, match=r"1 patient\(s\).*TCGA-AA-0000 \(.*DX1: LUAD, .*DX2: LUSC\).*`bag = \"slide\"`"):
        _source(tmp_path, table="mixed.csv", bag="patient").load()
    assert len(_source(tmp_path, table="mixed.csv", test_fraction=0).load()["train"]) == 8  # fine per slide
    wr.table(f"{tmp_path}/bare.csv", [{"slide_id": r["slide_id"], "label": r["label"]} for r in rows])
    with pytest.raises(DataError, match="no patient column"), pytest.warns(MilzooWarning):
        _source(tmp_path, table="bare.csv", bag="patient").load()


# --------------------------------------------------------------------------- patching attributes


def _h5_with_attrs(path, attrs, n=5, d=4):
    f_, c = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32), np.zeros((n, 2), np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["features"] = f_
        ds = f.create_dataset("coords", data=c)
        for k, v in attrs.items():
            ds.attrs[k] = v


TRIDENT = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40, "target_magnification": 20,
           "overlap": 0, "name": "s", "savetodir": "/x"}
CLAM = {"patch_size": 256, "patch_level": 1, "downsample": np.array([4.0, 4.0]), "level_dim": np.array([9, 9]),
        "downsampled_level_dim": np.array([9, 9]), "name": "s", "save_path": "/x"}


def test_patching_from_trident_and_clam_attributes():
    assert patching_from_attrs(TRIDENT) == {"producer": "trident", "patch_size": 256, "magnification": 20,
                                            "level0_magnification": 40, "patch_size_level0": 512, "overlap": 0}
    assert patching_from_attrs(CLAM) == {"producer": "clam", "patch_size": 256, "patch_level": 1,
                                         "downsample": 4, "patch_size_level0": 1024}
    # TRIDENT without patch_size_level0: from the magnifications; -1 is TRIDENT's "unknown"
    got = patching_from_attrs({"patch_size": 224, "target_magnification": 20, "level0_magnification": 40})
    assert got["patch_size_level0"] == 448
    assert "magnification" not in patching_from_attrs({"patch_size": 224, "target_magnification": -1})
    assert patching_from_attrs({}) == {} and patching_from_attrs({"name": "x"}) == {}


def test_patching_reaches_the_dataset_the_bags_and_converted_files(wr, tmp_path):
    _h5_with_attrs(tmp_path / "feats" / "a.h5", TRIDENT)
    _h5_with_attrs(tmp_path / "feats" / "b.h5", TRIDENT)
    _h5_with_attrs(tmp_path / "feats" / "c.h5", {**CLAM, "downsample": np.array([2.0, 2.0])})
    wr.table(f"{tmp_path}/slides.csv", [{"slide_id": s, "label": i % 2} for i, s in enumerate("abc")])
    assert probe_slide(slide_file(str(tmp_path / "feats" / "a.h5"))).patching["magnification"] == 20
    src = _source(tmp_path, test_fraction=0)
    tr = src.load()["train"]
    p = tr.patching
    assert p["slides"] == 3 and p["slides_with_attributes"] == 3 and p["patch_size"] == 256
    assert p["magnification"] == 20 and p["patch_size_level0"] == 512 and p["producer"] == ["clam", "trident"]
    assert src.data_info["patching"] == p and tr.data_info["patching"] == p
    assert tr[0].meta["patching"]["patch_size_level0"] == 512 and tr[2].meta["patching"]["patch_level"] == 1
    json.dumps(tr.data_info)  # JSON-able, for a run record
    # conversion keeps them
    convert_features(str(tmp_path / "feats"), str(tmp_path / "st"))
    st = probe_slide(slide_file(str(tmp_path / "st" / "a.safetensors")))
    assert st.patching == patching_from_attrs(TRIDENT)


def test_slides_patched_differently_are_warned_about(wr, tmp_path):
    _h5_with_attrs(tmp_path / "feats" / "a.h5", TRIDENT)
    _h5_with_attrs(tmp_path / "feats" / "b.h5", {**TRIDENT, "target_magnification": 40, "patch_size_level0": 256})
    wr.table(f"{tmp_path}/slides.csv", [{"slide_id": "a", "label": 0}, {"slide_id": "b", "label": 1}])
    with pytest.warns(MilzooWarning, match=r"different magnifications: 20 \(1 slides, e.g. 'a'\), 40"):
        tr = _source(tmp_path, test_fraction=0).load()["train"]
    assert tr.patching["magnification"] == [20, 40]


def test_synthetic_sets_carry_trident_attributes_and_whole_patients(tmp_path):
    from milzoo_wsi.synthetic import make_synthetic_slides

    info = make_synthetic_slides(str(tmp_path / "s"), n_slides=5, n_test=3, mean_patches=8, dim=4,
                                 slides_per_patient=2, fmt="h5")
    src = registry.get_component("dataset", "slides")
    ds = src(src.Config(features=info["features"], table=info["table"])).load()
    assert ds["train"].patching["patch_size"] == 256 and ds["train"].patching["magnification"] == 20
    assert set(ds["train"].groups.tolist()).isdisjoint(ds["test"].groups.tolist())


# --------------------------------------------------------------------------- the core protocols


def _bags(groups, labels, split=None):
    return BagListDataset([Bag(x=torch.zeros(2, 3), y=int(y), bag_id=f"b{i}") for i, y in enumerate(labels)],
                          ["0", "1"], groups=np.asarray(groups, dtype=object))


def test_dataset_splits_that_share_a_patient_are_refused():
    train = _bags(["p0", "p0", "p1", "p2", "p3", "p4"], [0, 0, 1, 0, 1, 1])
    test = _bags(["p1", "p5"], [1, 0])
    for kind in ("holdout", "cv_ensemble"):
        with pytest.raises(DataError, match=r"fold 0 .*train and test share 1 group\(s\) \(p1\)"):
            make_folds(ProtocolConfig(kind=kind, folds=2), {"train": train, "test": test}, 0)
    val = _bags(["p5", "p0"], [0, 1])
    with pytest.raises(DataError, match="train and val share 1 group"):
        make_folds(ProtocolConfig(kind="holdout"), {"train": train, "val": val, "test": _bags(["p9"], [0])}, 0)
    ok = make_folds(ProtocolConfig(kind="holdout", val_fraction=0.3), {"train": train, "test": _bags(["p5"], [0])}, 0)
    assert set(ok[0].train.groups.tolist()).isdisjoint(ok[0].val.groups.tolist())


def test_validation_carve_out_is_grouped_even_with_few_patients():
    ds = _bags(["a", "a", "a", "b", "b", "c", "c", "c"], [0, 0, 0, 1, 1, 0, 1, 1])
    # val_fraction 0.1 asks for 10 grouped folds; with 3 patients one patient validates
    tr, va = carve_validation(ds, 0.1, seed=0)
    assert len(set(ds.groups[va].tolist())) == 1 and set(ds.groups[tr].tolist()).isdisjoint(ds.groups[va].tolist())
    with pytest.raises(UserError, match="single group"):
        carve_validation(_bags(["a", "a", "a"], [0, 1, 0]), 0.3, seed=0)
    # cv with a validation carve-out: no patient in two of train, val and test
    ds = _bags([f"p{i // 2}" for i in range(24)], [(i // 2) % 2 for i in range(24)])
    for f in make_folds(ProtocolConfig(kind="cv", folds=3, val_fraction=0.25), {"all": ds}, 0):
        g = {n: set(d.groups.tolist()) for n, d in {"train": f.train, **f.evals}.items()}
        assert not g["train"] & g["val"] and not g["train"] & g["test"] and not g["val"] & g["test"]


# --------------------------------------------------------------------------- a recipe, end to end


RECIPE = """
name = "patients"
seed = 0
[data]
name = "slides"
features = "{features}"
table = "{table}"
patient_column = "subject"
bag = "{bag}"
test_fraction = 0.25
load_workers = 1
[encoder]
name = "identity"
[pooling]
name = "abmil"
attn_hidden = 4
[[loss]]
name = "bag_ce"
[optim]
name = "adam"
lr = 1e-3
[train]
epochs = 1
threads = 1
progress = false
[protocol]
kind = "cv_ensemble"
folds = 2
"""


@pytest.mark.parametrize("bag", ["slide", "patient"])
def test_a_run_and_the_split_command_group_by_the_named_column(wr, tmp_path, bag):
    import csv

    from click.testing import CliRunner

    from milzoo.cli import cli
    from milzoo.cli._app import _add_plugin_commands
    from milzoo.runs.runner import run

    rows = _clam_set(wr, tmp_path, n_patients=8, per_patient=2)
    wr.table(f"{tmp_path}/subj.csv", [{"subject": r["case_id"], "slide_id": r["slide_id"] + ".svs",
                                       "label": r["label"]} for r in rows])
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(features=f"{tmp_path}/feats", table=f"{tmp_path}/subj.csv", bag=bag))
    summary = run(str(recipe), out=tmp_path / "run", progress=False)
    assert summary["num_folds"] == 2

    def ids(path):
        with open(path, newline="") as fh:
            return {r["bag_id"][:12] for r in csv.DictReader(fh)}

    val = [ids(tmp_path / "run" / f"fold-{i:02d}" / "last" / "predictions-val.csv") for i in range(2)]
    test = ids(tmp_path / "run" / "fold-00" / "last" / "predictions-test.csv")
    assert not val[0] & val[1] and not (val[0] | val[1]) & test and len(test) == 2
    # `milzoo features split` draws the same split and keeps the column's name
    _add_plugin_commands()
    res = CliRunner().invoke(cli, ["features", "split", str(recipe), str(tmp_path / "split.csv")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "split.csv", newline="") as fh:
        split = list(csv.DictReader(fh))
    assert list(split[0]) == ["slide_id", "label", "subject", "split"]
    assert {r["subject"] for r in split if r["split"] == "test"} == test
