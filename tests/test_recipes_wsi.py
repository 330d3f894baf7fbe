"""Every shipped recipe validates; every WSI recipe runs its protocol on a tiny generated slide set.

The WSI recipes point at user-supplied data (data/camelyon16, data/tcga_lung), which does not exist
here: validation never touches the data, and the runs swap in a generated set through ``--set``
overrides (paths, 2 epochs, 2 folds, small dims).  Everything else (protocol, threshold, monitor,
optimiser, schedule) is the recipe's own.
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
                      *(p for p in (ROOT / "wsi").glob("*.toml") if not p.stem.startswith(("survival_", "regression_")))])

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
