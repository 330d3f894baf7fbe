"""Survival and regression labels from the slide table (``target = "survival" | "regression"``): the table's
columns and checks, the labels every part of the ``slides`` dataset hands on, the held-out split stratified by
``label_strata``, the published split, and runs of the survival and regression tasks on synthetic slides."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError

import milzoo
from milzoo import registry
from milzoo.datasets import collate_bags, label_strata
from milzoo.datasets.protocols import make_folds
from milzoo.errors import DataError, MilzooWarning
from milzoo.recipe.schema import ProtocolConfig
from milzoo_wsi.synthetic import make_synthetic_slides, patient_outcomes
from milzoo_wsi.table import read_slide_table, stratified_group_split

RECIPES = Path(__file__).resolve().parents[1] / "src" / "milzoo_wsi" / "recipes" / "wsi"


def _source(root, table="slides.csv", **kw):
    cls = registry.get_component("dataset", "slides")
    return cls(cls.Config(features=f"{root}/feats", table=f"{root}/{table}", **kw))


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _tcga_survival(wr, root, n_patients=12, per_patient=2, extra=None):
    """An MCAT/PORPOISE-format table: case_id, slide_id (with .svs), survival_months, censorship, and the
    cohort's other columns; a patient's slides share its time and censorship."""
    rows = []
    for p in range(n_patients):
        case = f"TCGA-2F-{p:04d}"
        for k in range(per_patient):
            sid = f"{case}-01Z-00-DX{k + 1}"
            f, c = wr.feats(10 * p + k, 3 + k, 4)
            wr.slide(f"{root}/feats/{sid}.h5", f, c)
            row = {"case_id": case, "slide_id": sid + ".svs", "oncotree_code": "BLCA", "age": 60 + p,
                   "survival_months": f"{5.5 + 3 * p:.2f}", "censorship": p % 3 == 0 and 1 or 0}
            if extra is not None:
                row.update(extra(p, k))
            rows.append(row)
    wr.table(f"{root}/slides.csv", rows)
    return rows


def _regression_set(wr, root, n_patients=12, per_patient=2, columns=("target",)):
    rows = []
    for p in range(n_patients):
        for k in range(per_patient):
            sid = f"s{p:02d}_{k}"
            f, c = wr.feats(100 + 10 * p + k, 3 + k, 4)
            wr.slide(f"{root}/feats/{sid}.safetensors", f, c)
            rows.append({"slide_id": sid, "patient_id": f"p{p:02d}",
                         **{col: f"{(j + 1) * 0.5 * p:.3f}" for j, col in enumerate(columns)}})
    wr.table(f"{root}/slides.csv", rows)
    return rows


# --------------------------------------------------------------------------- the table


def test_a_tcga_survival_table_reads_time_and_event_with_censorship_1_meaning_censored(wr, tmp_path):
    rows = _tcga_survival(wr, tmp_path)
    t = read_slide_table(f"{tmp_path}/slides.csv", target="survival")
    assert t.labels.dtype == np.float64 and t.labels.shape == (24, 2)
    assert t.class_names == ["risk"] and t.patient_column == "case_id" and t.target == "survival"
    np.testing.assert_allclose(t.labels[:, 0], [float(r["survival_months"]) for r in rows])
    np.testing.assert_array_equal(t.labels[:, 1], [1 - int(r["censorship"]) for r in rows])  # event = 1 - censorship
    assert t.label_columns == ["survival_months", "censorship"]
    assert t.label_of(0) == (5.5, 0.0) and t.describe_label(t.label_of(0)) == "survival_months 5.5, censored"


def test_an_event_column_and_agreeing_columns_read_the_same(wr, tmp_path):
    _tcga_survival(wr, tmp_path, extra=lambda p, k: {"event": 0 if p % 3 == 0 else 1})
    both = read_slide_table(f"{tmp_path}/slides.csv", target="survival")
    only_event = read_slide_table(f"{tmp_path}/slides.csv", target="survival", censorship_column=None)
    np.testing.assert_array_equal(both.labels, only_event.labels)
    assert only_event.label_columns == ["survival_months", "event"]


def test_contradicting_or_bad_survival_cells_are_all_named_with_their_lines(wr, tmp_path):
    def extra(p, k):
        row = {"event": 0 if p % 3 == 0 else 1}
        if (p, k) == (1, 0):
            row["survival_months"] = "-2"
        if (p, k) == (2, 1):
            row["censorship"] = "2"
        if (p, k) == (3, 0):
            row["survival_months"] = ""
        if (p, k) == (4, 0):
            row.update(event=1, censorship=1)
        return row

    _tcga_survival(wr, tmp_path, extra=extra)
    with pytest.raises(DataError) as err:
        read_slide_table(f"{tmp_path}/slides.csv", target="survival")
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert "line 4: slide 'TCGA-2F-0001-01Z-00-DX1.svs': survival_months is '-2', not a time >= 0" in msg
    assert "line 7:" in msg and "censorship is '2'; it must be 0 or 1 (1 = censored" in msg
    assert "line 8:" in msg and "survival_months is empty" in msg
    assert "line 10:" in msg and "contradict each other" in msg


def test_a_survival_table_needs_its_time_and_a_censoring_column(wr, tmp_path):
    wr.table(f"{tmp_path}/a.csv", [{"slide_id": "a", "months": 3, "censorship": 0}])
    with pytest.raises(DataError, match="no time column 'survival_months'.*months"):
        read_slide_table(f"{tmp_path}/a.csv", target="survival")
    wr.table(f"{tmp_path}/b.csv", [{"slide_id": "a", "survival_months": 3, "status": 0}])
    with pytest.raises(DataError, match="neither of the censoring columns"):
        read_slide_table(f"{tmp_path}/b.csv", target="survival")
    t = read_slide_table(f"{tmp_path}/b.csv", target="survival", event_column="status")
    assert t.labels.tolist() == [[3.0, 0.0]]


def test_regression_targets_one_column_or_several(wr, tmp_path):
    _regression_set(wr, tmp_path)
    t = read_slide_table(f"{tmp_path}/slides.csv", target="regression")
    assert t.labels.dtype == np.float64 and t.labels.shape == (24,) and t.class_names == ["target"]
    assert t.label_of(3) == 0.5 and t.label_fields(3) == {"target": "0.500"}
    _regression_set(wr, tmp_path, columns=("purity", "tmb"))
    t = read_slide_table(f"{tmp_path}/slides.csv", target="regression", target_columns=["tmb", "purity"])
    assert t.labels.shape == (24, 2) and t.class_names == ["tmb", "purity"]
    assert t.labels[2].tolist() == [1.0, 0.5]  # in the order target_columns names them
    with pytest.raises(DataError, match=r"lacks the target column\(s\) \['target'\].*`target_columns`"):
        read_slide_table(f"{tmp_path}/slides.csv", target="regression")


def test_missing_or_non_finite_targets_are_refused_with_their_rows(wr, tmp_path):
    rows = _regression_set(wr, tmp_path)
    rows[1]["target"], rows[4]["target"], rows[6]["target"] = "nan", "", "high"
    wr.table(f"{tmp_path}/slides.csv", rows)
    with pytest.raises(DataError) as err:
        read_slide_table(f"{tmp_path}/slides.csv", target="regression")
    msg = str(err.value)
    assert "3 problem(s)" in msg and "line 3: slide 's00_1': target target is 'nan', not a finite number" in msg
    assert "line 6: slide 's02_0': target target is empty" in msg and "line 8:" in msg and "'high'" in msg


def test_no_label_column_is_needed_but_class_names_are_refused(wr, tmp_path):
    _regression_set(wr, tmp_path)
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['label'\].*target = \\?\"survival\\?\""):
        read_slide_table(f"{tmp_path}/slides.csv")
    with pytest.raises(DataError, match="`class_names` lists classes, but `target = \"regression\"`"):
        read_slide_table(f"{tmp_path}/slides.csv", ["a", "b"], target="regression")
    cls = registry.get_component("dataset", "slides")
    with pytest.raises(ValidationError, match=r"class_names.*\[\"risk\"\]"):
        cls.Config(features="f", table="t.csv", target="survival", class_names=["a", "b"])


def test_options_of_another_target_are_refused_in_the_recipe():
    cls = registry.get_component("dataset", "slides")
    with pytest.raises(ValidationError, match="target_columns is read only with target = 'regression'"):
        cls.Config(features="f", table="t.csv", target_columns=["purity"])
    with pytest.raises(ValidationError, match="time_column is read only with target = 'survival'"):
        cls.Config(features="f", table="t.csv", target="regression", time_column="OS.time")
    with pytest.raises(ValidationError, match="needs a censoring column"):
        cls.Config(features="f", table="t.csv", target="survival", censorship_column="", event_column="")
    # "" (TOML has no null) ignores a column, and survives the resolved recipe (which drops None values)
    cfg = cls.Config(features="f", table="t.csv", target="survival", censorship_column=None, event_column="OS")
    assert cfg.censorship_column == "" and cfg.model_dump(exclude_none=True)["censorship_column"] == ""


def test_repeated_rows_compare_their_numbers(wr, tmp_path):
    rows = _tcga_survival(wr, tmp_path, n_patients=4)
    wr.table(f"{tmp_path}/slides.csv", rows + [{**rows[0], "survival_months": "5.500"}])
    with pytest.warns(MilzooWarning, match="twice with the same label"):
        t = read_slide_table(f"{tmp_path}/slides.csv", target="survival")
    assert len(t) == 8
    wr.table(f"{tmp_path}/slides.csv", rows + [{**rows[0], "censorship": "0"}])
    with pytest.raises(DataError, match="repeats line 2 with another survival_months and censorship"):
        read_slide_table(f"{tmp_path}/slides.csv", target="survival")


def test_the_held_out_patients_are_stratified_by_label_strata():
    # 40 patients of 2 slides: survival labels, one event per 4 patients; strata = the event indicator
    groups = np.repeat([f"p{i}" for i in range(40)], 2)
    event = np.repeat((np.arange(40) % 4 == 0).astype(float), 2)
    labels = np.stack([np.repeat(np.arange(40, dtype=float), 2), event], axis=1)
    mask = stratified_group_split(labels, groups, 0.25, seed=0)
    assert mask.sum() == 20 and event[mask].sum() in (4, 6)  # 2 or 3 of the 10 held-out patients had an event
    assert not set(groups[mask]) & set(groups[~mask])
    # regression: the target's quartiles; the held-out patients cover all four
    target = np.repeat(np.linspace(0, 1, 40), 2)
    mask = stratified_group_split(target, groups, 0.25, seed=1)
    assert set(label_strata(target)[mask]) == {0, 1, 2, 3}
    # class labels split exactly as before (label_strata of class indices is the labels themselves)
    y = np.repeat(np.arange(40) % 2, 2)
    np.testing.assert_array_equal(label_strata(y), y)


# --------------------------------------------------------------------------- the dataset


def test_survival_slides_load_with_float_labels_and_pair_bags(wr, tmp_path):
    _tcga_survival(wr, tmp_path, n_patients=16)
    src = _source(tmp_path, target="survival")
    out = src.load()
    tr, te = out["train"], out["test"]
    assert tr.labels.dtype == np.float64 and tr.labels.shape == (len(tr), 2) and tr.class_names == ["risk"]
    np.testing.assert_array_equal(tr.strata, tr.labels[:, 1].astype(np.int64))
    bag = tr[0]
    assert isinstance(bag.y, np.ndarray) and bag.y.dtype == np.float32 and bag.y.tolist() == tr.labels[0].tolist()
    batch = collate_bags([tr[0], tr[1]])
    assert batch.y.dtype == torch.float32 and batch.y.shape == (2, 2)
    assert set(tr.groups.tolist()).isdisjoint(te.groups.tolist())
    assert src.split_info["method"] == "stratified by event indicator, grouped by patient (column case_id)"
    assert src.data_info["target"] == "survival" and src.data_info["label_columns"] == ["survival_months", "censorship"]
    # the resident split (the cache on the training device) gives the same labels
    res = tr.to_resident("cpu", lambda t: t)
    torch.testing.assert_close(res.batch([0, 1], torch.tensor([0, 1])).y, batch.y)
    # the folds are stratified by event and grouped by patient
    for f in make_folds(ProtocolConfig(kind="cv", folds=2), out, 0):
        assert set(f.train.groups.tolist()).isdisjoint(f.evals["test"].groups.tolist())
    # read on access (no cache): the same
    assert _source(tmp_path, target="survival", cache="none").load()["train"][0].y.tolist() == bag.y.tolist()


def test_the_published_survival_split_reads_back_the_same(wr, tmp_path):
    _tcga_survival(wr, tmp_path, n_patients=16)
    src = _source(tmp_path, target="survival")
    out = src.load()
    src.write_split(f"{tmp_path}/split.csv")
    rows = _rows(tmp_path / "split.csv")
    assert list(rows[0]) == ["slide_id", "survival_months", "censorship", "case_id", "split"]
    assert rows[0]["slide_id"].endswith(".svs") and rows[0]["survival_months"] == "5.50"
    back = _source(tmp_path, table="split.csv", target="survival").load()
    for name in ("train", "test"):
        assert back[name].bag_ids == out[name].bag_ids
        np.testing.assert_array_equal(back[name].labels, out[name].labels)


def test_regression_slides_with_several_targets(wr, tmp_path):
    _regression_set(wr, tmp_path, columns=("purity", "tmb"))
    src = _source(tmp_path, target="regression", target_columns=["purity", "tmb"], test_fraction=0.0)
    tr = src.load()["train"]
    assert tr.labels.shape == (24, 2) and tr.class_names == ["purity", "tmb"] and tr.num_classes == 2
    assert tr[2].y.dtype == np.float32 and tr[2].y.tolist() == [0.5, 1.0]
    src = _source(tmp_path, target="regression", target_columns=["tmb"], test_fraction=0.25)
    out = src.load()
    assert out["train"].labels.shape == (18,) and isinstance(out["train"][0].y, float)
    assert "stratified by target quartile" in src.split_info["method"]
    src.write_split(f"{tmp_path}/split.csv")
    assert list(_rows(tmp_path / "split.csv")[0]) == ["slide_id", "tmb", "patient_id", "split"]


def test_one_bag_per_patient_needs_one_outcome_per_patient(wr, tmp_path):
    _tcga_survival(wr, tmp_path, n_patients=8, per_patient=3)
    tr = _source(tmp_path, target="survival", bag="patient", test_fraction=0.0).load()["train"]
    assert len(tr) == 8 and tr.labels.shape == (8, 2) and tr[1].meta["patient_id"] == "TCGA-2F-0001"
    assert tr[1].y.tolist() == [8.5, 1.0] and len(tr[1].meta["slide_ids"]) == 3
    _tcga_survival(wr, tmp_path, n_patients=8, per_patient=3,
                   extra=lambda p, k: {"survival_months": "40"} if (p, k) == (2, 1) else {})
    with pytest.raises(DataError, match=r"one survival time and event, but 1 patient\(s\).*TCGA-2F-0002 "
                                        r"\(TCGA-2F-0002-01Z-00-DX1.svs: survival_months 11.5, event, "
                                        r"TCGA-2F-0002-01Z-00-DX2.svs: survival_months 40, event"):
        _source(tmp_path, target="survival", bag="patient").load()
    _regression_set(wr, tmp_path)
    rows = _rows(f"{tmp_path}/slides.csv")
    rows[3]["target"] = "9"
    wr.table(f"{tmp_path}/slides.csv", rows)
    with pytest.raises(DataError, match="different targets: p01 \\(s01_0: target 0.5, s01_1: target 9\\)"):
        _source(tmp_path, target="regression", bag="patient").load()


# --------------------------------------------------------------------------- synthetic outcomes


def test_synthetic_slides_write_patient_outcomes(tmp_path):
    info = make_synthetic_slides(str(tmp_path / "s"), n_slides=40, n_test=8, mean_patches=20, dim=4, seed=2,
                                 slides_per_patient=2, outcomes=True, patient_column="case_id")
    rows = _rows(info["table"])
    assert list(rows[0]) == ["slide_id", "label", "case_id", "split", "survival_months", "censorship", "target"]
    by = {}
    for r in rows:
        by.setdefault(r["case_id"], set()).add((r["survival_months"], r["censorship"], r["target"]))
    assert all(len(v) == 1 for v in by.values())  # one outcome per patient
    # the outcome follows the tumour patches: patients without tumour slides have the smallest targets
    tumour = {r["case_id"] for r in rows if r["label"] == "tumor"}
    assert max(float(r["target"]) for r in rows if r["case_id"] not in tumour) < 1.0
    assert min(float(r["target"]) for r in rows if r["case_id"] in tumour) > 1.0
    # the default table is as before: no outcome columns
    plain = make_synthetic_slides(str(tmp_path / "p"), n_slides=4, mean_patches=8, dim=4, seed=2)
    assert list(_rows(plain["table"])[0]) == ["slide_id", "label", "patient_id"]


def test_synthetic_outcomes_censor_about_the_share_asked_and_shorten_with_tumour():
    share = np.linspace(0.0, 0.05, 2000)
    out = patient_outcomes(share, seed=0, censoring=0.3)
    assert abs(out["censorship"].mean() - 0.3) < 0.04
    events = out["censorship"] == 0
    assert np.corrcoef(share[events], np.log(out["survival_months"][events] + 1e-3))[0, 1] < -0.2
    assert np.corrcoef(share, out["target"])[0, 1] > 0.99


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def outcome_slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsi-targets")
    return make_synthetic_slides(str(root / "s"), n_slides=32, mean_patches=16, dim=8, seed=3, signal=3.0,
                                 slides_per_patient=2, outcomes=True, patient_column="case_id")


def _recipe(data: dict, target: str, task: dict) -> dict:
    return {
        "name": f"tiny_{target}", "seed": 0,
        "data": {"name": "slides", "features": data["features"], "table": data["table"], "target": target,
                 "test_fraction": 0.25, "load_workers": 1},
        "task": task,
        "encoder": {"name": "mlp", "dims": [8]},
        "pooling": {"name": "abmil", "attn_hidden": 8},
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 2, "threads": 1, "progress": False},
        "protocol": {"kind": "cv", "folds": 2, "patient_metrics": "mean"},
    }


def _check_patients(run_dir: Path, table: str, splits=("test",)) -> None:
    """Every evaluated bag's patient is on one side only: the training bags of a fold never meet its test bags."""
    patient = {r["slide_id"]: r["case_id"] for r in _rows(table)}
    tested = []
    for fold in sorted(run_dir.glob("fold-*")):
        for split in splits:
            tested.append({patient[r["bag_id"]] for r in _rows(fold / "last" / f"predictions-{split}.csv")})
    assert not tested[0] & tested[1]  # the two folds test different patients
    assert tested[0] | tested[1] == set(patient.values())


def _survival_installed() -> bool:
    try:
        registry.get_component("task", "survival")
    except Exception:  # noqa: BLE001
        return False
    return True


def test_a_survival_run_on_slides(outcome_slides, tmp_path):
    if not _survival_installed():
        pytest.skip("the survival task is not installed (pip install milzoo-survival)")
    recipe = _recipe(outcome_slides, "survival", {"name": "survival", "head": "discrete", "bins": 2})
    recipe["data"]["test_fraction"] = 0.0
    summary = milzoo.run(recipe, out=tmp_path / "run", progress=False)
    for key in ("c_index", "loss", "patient_c_index"):
        values = summary["last"]["test"][key]["values"]
        assert len(values) == 2 and all(isinstance(v, float) for v in values)
    header = _rows(tmp_path / "run" / "fold-00" / "last" / "predictions-test.csv")[0]
    assert list(header) == ["bag_id", "time", "event", "risk", "S_bin0", "S_bin1"]
    _check_patients(tmp_path / "run", outcome_slides["table"])


def test_a_regression_run_on_slides(outcome_slides, tmp_path):
    recipe = _recipe(outcome_slides, "regression", {"name": "regression"})
    recipe["data"]["test_fraction"] = 0.0
    recipe["data"]["bag"] = "patient"
    summary = milzoo.run(recipe, out=tmp_path / "run", progress=False)
    for key in ("r2", "mae", "rmse", "loss"):
        assert len(summary["last"]["test"][key]["values"]) == 2
    rows = _rows(tmp_path / "run" / "fold-00" / "last" / "predictions-test.csv")
    assert list(rows[0]) == ["bag_id", "target", "pred"] and rows[0]["bag_id"].startswith("patient_")
    tested = [{r["bag_id"] for r in _rows(tmp_path / "run" / f"fold-{i:02d}" / "last" / "predictions-test.csv")}
              for i in range(2)]
    assert not tested[0] & tested[1] and len(tested[0] | tested[1]) == 16


def test_a_regression_run_holds_out_patients(outcome_slides, tmp_path):
    recipe = _recipe(outcome_slides, "regression", {"name": "regression"})
    recipe["protocol"] = {"kind": "holdout", "val_fraction": 0.25, "monitor": "r2", "patient_metrics": "mean"}
    recipe["train"]["data_on_device"] = False  # the DataLoader path
    summary = milzoo.run(recipe, out=tmp_path / "run", progress=False)
    assert "patient_r2" in summary["last"]["test"] and "r2" in summary["last"]["val"]
    patient = {r["slide_id"]: r["case_id"] for r in _rows(outcome_slides["table"])}
    sides = {s: {patient[r["bag_id"]] for r in _rows(tmp_path / "run" / "fold-00" / "last" / f"predictions-{s}.csv")}
             for s in ("val", "test")}
    assert not sides["val"] & sides["test"]


# --------------------------------------------------------------------------- shipped recipes


@pytest.mark.parametrize("name", ["survival_tcga_abmil", "regression_abmil"])
def test_shipped_recipes_validate_and_run_on_synthetic_slides(name, outcome_slides, tmp_path):
    from milzoo.cli import cli
    from milzoo.recipe import load_recipe

    path = RECIPES / f"{name}.toml"
    res = CliRunner().invoke(cli, ["validate", str(path)])
    assert res.exit_code == 0 and res.output.startswith("ok: "), res.output
    text = path.read_text()
    r = load_recipe(path)
    data = r.components["data"]
    assert data.features.startswith("data/") and data.table.endswith(".csv")  # the user's files
    assert (r.root.protocol.kind, r.root.protocol.folds, r.root.protocol.patient_metrics) == ("cv", 5, "mean")
    if name.startswith("survival"):
        if not _survival_installed():
            pytest.skip("the survival task is not installed (pip install milzoo-survival)")
        assert (data.target, data.time_column, data.censorship_column, data.patient_column) == (
            "survival", "survival_months", "censorship", "case_id")
        assert "**1 = CENSORED**" in text or "**1 = censored**" in text
        assert r.root.task.name == "survival"
    else:
        assert data.target == "regression" and data.target_columns == ["target"] and r.root.task.name == "regression"
    overrides = [f'data.features="{outcome_slides["features"]}"', f'data.table="{outcome_slides["table"]}"',
                 "data.load_workers=1", "train.epochs=1", "protocol.folds=2", "train.threads=1",
                 "train.progress=false", "encoder.dims=[8]", "pooling.attn_hidden=8"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = milzoo.run(str(path), out=tmp_path / "run", overrides=overrides, progress=False)
    key = "patient_c_index" if name.startswith("survival") else "patient_r2"
    assert len(summary["last"]["test"][key]["values"]) == 2
    values = summary["last"]["test"][key]["values"]
    assert all(isinstance(v, float) and (math.isnan(v) or -1e6 < v < 1e6) for v in values)
    _check_patients(tmp_path / "run", outcome_slides["table"])
