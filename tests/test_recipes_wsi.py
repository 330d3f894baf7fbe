"""Every shipped recipe validates; every WSI recipe runs its protocol on a tiny generated slide set.

The WSI recipes point at user-supplied data (data/camelyon16, data/tcga_lung), which does not exist
here: validation never touches the data, and the runs swap in a generated set through ``--set``
overrides (paths, 2 epochs, 2 folds, small dims).  Everything else (protocol, threshold, monitor,
optimiser, schedule) is the recipe's own.

The synthetic-slide recipes (``wsi/<model>_synthetic``: CLAM-SB/MB, Transformer-MIL, ILRA-MIL, RRT-MIL,
WiKG with their official whole-slide settings) point at a set made by ``milzoo_wsi.synthetic``; each is
checked against the official settings written below and trained for one epoch on a tiny generated set.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from milzoo.cli import cli
from milzoo.recipe import load_recipe, read_toml

pytest.importorskip("milzoo_wsi")

ROOT = Path(__file__).resolve().parents[1] / "recipes"
ALL_RECIPES = sorted(ROOT.rglob("*.toml"))
# the classification recipes (the survival and regression ones are tested in plugins/milzoo-wsi/tests/test_targets.py)
WSI_RECIPES = sorted([ROOT / "psmil_camelyon16.toml", ROOT / "psmil_tcga_lung.toml",
                      *(p for p in (ROOT / "wsi").glob("*.toml")
                        if not p.stem.startswith(("survival_", "regression_")) and not p.stem.endswith("_synthetic"))])
#: the synthetic-slide recipes of the models of issue 26, each with its official whole-slide settings
SYNTHETIC_RECIPES = sorted((ROOT / "wsi").glob("*_synthetic.toml"))

#: per pooling, options that make the model tiny (the recipes' defaults are for 512-d slides)
SMALL = {
    "psatt": [],
    "abmil": ["pooling.attn_hidden=8"],
    "dsmil": ["pooling.query_dim=8"],
    "dtfd": ["pooling.reduced_dim=8", "pooling.attn_hidden=8"],
    "transmil": ["pooling.hidden_dim=16", "pooling.heads=2", "pooling.dim_head=8", "pooling.num_landmarks=4",
                 "pooling.residual_kernel=3"],
}


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT.parent))


def test_the_wsi_recipes_are_there():
    names = {p.stem for p in WSI_RECIPES}
    assert names == {"psmil_camelyon16", "psmil_tcga_lung"} | {
        f"{m}_{d}" for m in ("abmil", "dsmil", "dtfd", "transmil") for d in ("camelyon16", "tcga_lung")
    }


@pytest.mark.parametrize("path", ALL_RECIPES, ids=_rel)
def test_every_recipe_validates(path):
    res = CliRunner().invoke(cli, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("ok: ")


@pytest.mark.parametrize("path", WSI_RECIPES, ids=_rel)
def test_wsi_recipes_follow_the_protocol(path):
    r = load_recipe(path)
    p = r.root.protocol
    assert (p.kind, p.folds, p.threshold) == ("cv_ensemble", 5, "youden")
    assert p.monitor == ("loss" if r.root.pooling.name == "transmil" else "auc")
    data = r.components["data"]
    assert r.root.data.name == "slides" and data.features.startswith("data/") and data.table.endswith(".csv")
    assert r.root.encoder.name == "mlp" and r.components["encoder"].dims == [512, 512]
    if "tcga" in path.stem:
        assert data.test_fraction == 0.25 and data.class_names == ["LUAD", "LUSC"]
    else:
        assert data.class_names == ["normal", "tumor"]
    if r.root.pooling.name == "psatt":
        o, s, t = r.root.optim, r.root.schedule, r.root.train
        assert (o.name, o.lr, o.momentum, o.weight_decay) == ("sgd", 1e-3, 0.9, 1e-4)
        assert (s.name, s.milestones, s.gamma) == ("step", [5, 10, 15], 0.1)
        assert t.epochs == 100 and t.early_stopping is not None and t.early_stopping.patience == 10


# --------------------------------------------------------------------------- tiny runs


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def slide_sets(tmp_path_factory):
    """A CAMELYON16-like set (split column) and a TCGA-like one (LUAD/LUSC, no split column)."""
    from milzoo_wsi.synthetic import make_synthetic_slides

    root = tmp_path_factory.mktemp("wsi-recipes")
    c16 = make_synthetic_slides(str(root / "c16"), n_slides=12, n_test=6, mean_patches=16, dim=8, seed=1,
                                signal=3.0, slides_per_patient=2)
    tcga = make_synthetic_slides(str(root / "tcga"), n_slides=16, mean_patches=16, dim=8, seed=6, signal=3.0,
                                 slides_per_patient=2)
    rows = _rows(tcga["table"])
    with open(tcga["table"], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({**r, "label": {"normal": "LUAD", "tumor": "LUSC"}[r["label"]]} for r in rows)
    return {"camelyon16": c16, "tcga_lung": tcga}


@pytest.mark.parametrize("path", WSI_RECIPES, ids=_rel)
def test_wsi_recipe_runs_its_protocol(path, slide_sets, tmp_path):
    from milzoo.runs.runner import run

    data = slide_sets["tcga_lung" if "tcga" in path.stem else "camelyon16"]
    pooling = read_toml(path)["pooling"]["name"]
    overrides = [
        f'data.features="{data["features"]}"', f'data.table="{data["table"]}"', "data.load_workers=1",
        "train.epochs=2", "protocol.folds=2", "train.threads=1", "train.progress=false", "encoder.dims=[8]",
        *SMALL[pooling],
    ]
    summary = run(str(path), out=tmp_path / "run", overrides=overrides, progress=False)
    assert summary["protocol"] == "cv_ensemble" and summary["num_folds"] == 2
    for fold in summary["folds"]:
        for key in ("acc", "auc", "f1"):
            assert key in fold["last"]["test"] and key in fold["last"]["val"]
    for key in ("acc", "auc", "f1"):
        assert len(summary["last"]["test"][key]["values"]) == 2
        v = summary["ensemble"]["test"][key]
        assert isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0
    assert summary["ensemble"]["test"]["n_models"] == 2

    # no patient in two folds: each training patient is validated by exactly one fold, test patients by none
    patient = {r["slide_id"]: r["patient_id"] for r in _rows(data["table"])}
    val = [{patient[r["bag_id"]] for r in _rows(tmp_path / "run" / f"fold-{i:02d}" / "last" / "predictions-val.csv")}
           for i in range(2)]
    test = {patient[r["bag_id"]] for r in _rows(tmp_path / "run" / "fold-00" / "last" / "predictions-test.csv")}
    assert not val[0] & val[1] and not (val[0] | val[1]) & test
    assert val[0] | val[1] | test == set(patient.values())


# --------------------------------------------------------------------------- synthetic-slide recipes

#: the official whole-slide settings (docs/models/<model>.md and each recipe's header say where they come from)
OFFICIAL = {
    "clam_sb_synthetic": dict(
        encoder={"name": "identity"},
        pooling={"name": "clam_sb", "size": "small", "gated": True, "dropout": 0.25, "k_sample": 8,
                 "subtyping": False},
        loss={"name": "clam", "bag_weight": 0.7, "inst_loss": "svm", "bag_loss": "ce"},
        optim=("adam", 2e-4, 1e-5), schedule="constant", epochs=200, early_stopping=(20, 50), monitor="loss"),
    "vitmil_synthetic": dict(
        encoder={"name": "identity"},
        pooling={"name": "vit_mil", "dim": 512, "depth": 2, "heads": 8, "dim_head": 64, "mlp_dim": 512,
                 "dropout": 0.0, "emb_dropout": 0.0, "pool": "cls"},
        loss={"name": "bag_ce"}, optim=("adamw", 2e-5, 2e-5), schedule="constant", epochs=8, early_stopping=None,
        monitor="loss"),
    "ilra_synthetic": dict(
        encoder={"name": "identity"},
        pooling={"name": "ilra", "num_layers": 2, "hidden_feat": 256, "num_heads": 8, "topk": 1, "ln": True},
        loss={"name": "bag_ce"}, optim=("adam", 1e-4, 0.0), schedule="cosine", epochs=100, early_stopping=None,
        monitor="loss"),
    "rrt_synthetic": dict(
        encoder={"name": "mlp", "dims": [512], "dropout": 0.25},
        pooling={"name": "rrt", "region_num": 8, "n_layers": 2, "n_heads": 8, "epeg": True, "epeg_k": 15,
                 "cr_msa": True, "crmsa_k": 1, "crmsa_heads": 8, "all_shortcut": True, "trans_dropout": 0.1,
                 "aggregator": "dattention"},
        loss={"name": "bag_ce"}, optim=("adam", 2e-4, 1e-5), schedule="cosine", epochs=200, early_stopping=(30, 130),
        monitor="auc"),
    "wikg_synthetic": dict(
        encoder={"name": "identity"},
        pooling={"name": "wikg", "dim_hidden": 512, "topk": 6, "agg_type": "bi-interaction", "pool": "mean",
                 "dropout": 0.3},
        loss={"name": "bag_ce"}, optim=("adam", 1e-4, 1e-5), schedule="constant", epochs=100, early_stopping=None,
        monitor="auc"),
}
OFFICIAL["clam_mb_synthetic"] = {**OFFICIAL["clam_sb_synthetic"],
                                 "pooling": {**OFFICIAL["clam_sb_synthetic"]["pooling"], "name": "clam_mb"}}

#: per synthetic recipe, options that make the model tiny for a one-epoch run on 8-d features
SMALL_SYNTHETIC = {
    "clam_sb_synthetic": ["pooling.k_sample=2"],
    "clam_mb_synthetic": ["pooling.k_sample=2"],
    "vitmil_synthetic": ["pooling.dim=16", "pooling.heads=2", "pooling.dim_head=8", "pooling.mlp_dim=16"],
    "ilra_synthetic": ["pooling.hidden_feat=16", "pooling.num_heads=2"],
    "rrt_synthetic": ["encoder.dims=[16]", "pooling.n_heads=2", "pooling.crmsa_heads=2"],
    "wikg_synthetic": ["pooling.dim_hidden=16"],
}


def test_the_synthetic_recipes_are_there():
    assert {p.stem for p in SYNTHETIC_RECIPES} == set(OFFICIAL) == set(SMALL_SYNTHETIC)


@pytest.mark.parametrize("path", SYNTHETIC_RECIPES, ids=_rel)
def test_synthetic_recipes_carry_the_official_settings(path):
    want = OFFICIAL[path.stem]
    raw = read_toml(path)
    r = load_recipe(path)
    for section in ("encoder", "pooling"):
        assert raw[section] == want[section], section  # every option written out, nothing else
    assert raw["loss"] == [want["loss"]]
    o, t, p = r.root.optim, r.root.train, r.root.protocol
    assert (o.name, o.lr, o.weight_decay) == want["optim"]
    assert r.root.schedule.name == want["schedule"]
    assert (t.epochs, t.batch_size) == (want["epochs"], 1)  # one slide per step, as every official code
    es = t.early_stopping
    assert (None if es is None else (es.patience, es.min_epochs)) == want["early_stopping"]
    assert (p.kind, p.folds, p.threshold, p.monitor) == ("cv_ensemble", 5, "youden", want["monitor"])
    data = r.components["data"]
    assert r.root.data.name == "slides" and data.class_names == ["normal", "tumor"]
    assert (data.features, data.table) == ("data/synthetic/features", "data/synthetic/slides.csv")
    assert "make_synthetic_slides" in path.read_text()  # the header says how to make the set


@pytest.fixture(scope="module")
def synthetic_slides(tmp_path_factory):
    """A tiny set from the generator the recipes name: 12 training and 6 test slides of ~24 8-d patches."""
    from milzoo_wsi.synthetic import make_synthetic_slides

    return make_synthetic_slides(str(tmp_path_factory.mktemp("wsi-synthetic")), n_slides=12, n_test=6,
                                 mean_patches=24, dim=8, seed=3, signal=3.0, slides_per_patient=2)


@pytest.mark.parametrize("path", SYNTHETIC_RECIPES, ids=_rel)
def test_synthetic_recipe_validates_by_name_and_trains_one_epoch(path, synthetic_slides, tmp_path):
    from milzoo.runs.runner import run

    name = f"wsi/{path.stem}"
    res = CliRunner().invoke(cli, ["validate", name])
    assert res.exit_code == 0 and res.output.startswith(f"ok: {name} "), res.output
    data = synthetic_slides
    overrides = [
        f'data.features="{data["features"]}"', f'data.table="{data["table"]}"', "data.load_workers=1",
        "train.epochs=1", "protocol.folds=2", "train.threads=1", "train.progress=false",
        *SMALL_SYNTHETIC[path.stem],
    ]
    summary = run(name, out=tmp_path / "run", overrides=overrides, progress=False)
    assert summary["protocol"] == "cv_ensemble" and summary["num_folds"] == 2
    for key in ("acc", "auc", "f1"):
        assert len(summary["last"]["test"][key]["values"]) == 2
        v = summary["ensemble"]["test"][key]
        assert isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0
    config = (tmp_path / "run" / "fold-00" / "last" / "config.json").read_text()
    assert f'"{OFFICIAL[path.stem]["pooling"]["name"]}"' in config
    rows = _rows(tmp_path / "run" / "fold-00" / "last" / "predictions-test.csv")
    assert len(rows) == 6 and list(rows[0])[:2] == ["bag_id", "label"]
