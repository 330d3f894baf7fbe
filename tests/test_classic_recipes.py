"""The classic-benchmark recipes (recipes/classic/) validate, follow the protocol, and one of them runs."""

from __future__ import annotations

import importlib.util
import statistics
import tomllib
from pathlib import Path

import pytest

from milzoo.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
CLASSIC = ROOT / "recipes" / "classic"
MODELS = ["abmil", "abmil_gated", "dsmil", "dtfd", "transmil", "demil", "rgmil", "psatt", "clam_sb", "vitmil", "ilra", "rrt", "wikg"]
DATASETS = ["musk1", "musk2", "elephant"]
#: the pooling each model's recipes name, where it is not the model's own name
POOLING_OF = {"abmil_gated": "abmil", "vitmil": "vit_mil"}
ALL = [f"{m}_{d}" for m in MODELS for d in DATASETS]


def _table_module():
    spec = importlib.util.spec_from_file_location("classic_table", ROOT / "benchmarks" / "classic_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_model_and_dataset_has_a_recipe():
    assert sorted(p.stem for p in CLASSIC.glob("*.toml")) == sorted(ALL)


@pytest.mark.parametrize("stem", ALL)
def test_recipe_validates_and_follows_the_protocol(stem):
    model, dataset = stem.rsplit("_", 1)
    recipe = load_recipe(CLASSIC / f"{stem}.toml")
    root = recipe.root
    assert root.name == stem
    assert root.data.name == "classic" and recipe.components["data"].dataset == dataset
    p = root.protocol
    assert p.kind == "cv" and p.folds == 10 and p.standardize
    assert p.val_fraction == 0.0 or p.monitor != "acc" or p.eval_splits is None  # never selects on test
    assert root.train.early_stopping is None  # early stopping would need a validation split, not the test fold
    assert root.train.threads == 1
    assert root.pooling.name == POOLING_OF.get(model, model)
    if model.startswith("abmil"):
        assert recipe.components["pooling"].model_dump().get("gated", False) == (model == "abmil_gated")
    raw = tomllib.loads((CLASSIC / f"{stem}.toml").read_text())
    assert raw["loss"], "each classic recipe names its model's loss explicitly"


@pytest.mark.parametrize("dataset", DATASETS)
def test_rgmil_recipes_take_the_official_steps(dataset):
    # official benchmark.py: Adam lr 5e-5, no weight decay, 40 epochs, one bag per step
    root = load_recipe(CLASSIC / f"rgmil_{dataset}.toml").root
    assert (root.optim.name, root.optim.lr, root.train.epochs, root.train.batch_size) == ("adam", 5e-5, 40, 1)


@pytest.mark.parametrize("dataset", DATASETS)
def test_demil_recipes_say_how_to_reproduce_the_official_numbers(dataset):
    text = (CLASSIC / f"demil_{dataset}.toml").read_text()
    assert "share_uv = true" in text and "published" in text


def test_one_recipe_runs_and_the_table_renders(tmp_path):
    from milzoo.runs.runner import run

    out_root = tmp_path / "classic"
    summary = run(CLASSIC / "abmil_musk1.toml", out=out_root / "abmil_musk1", progress=False,
                  overrides=["protocol.folds=2", "protocol.repeats=1", "train.epochs=2"])
    assert summary["num_folds"] == 2
    acc = summary["last"]["test"]["acc"]
    assert 0.0 <= acc["mean"] <= 1.0 and len(acc["values"]) == 2

    table = _table_module()
    paths = table.recipe_paths(None)
    assert [p.stem for p in table.recipe_paths(["abmil_gated"])] == [f"abmil_gated_{d}" for d in DATASETS]
    assert {p.stem for p in table.recipe_paths(["musk2"])} == {f"{m}_musk2" for m in MODELS}
    rows = table.collect(out_root, paths, saved=tmp_path / "saved")
    assert list(rows) == [("abmil", "musk1")]
    # a finished run's table files are copied out (no weights), and the table can be rebuilt from the copies
    table.save_results(out_root / "abmil_musk1", tmp_path / "saved" / "abmil_musk1")
    assert sorted(f.name for f in (tmp_path / "saved" / "abmil_musk1").iterdir()) == [
        "recipe.toml", "run.json", "summary.json"]
    from_copies = table.collect(tmp_path / "gone", paths, saved=tmp_path / "saved")
    assert list(from_copies) == [("abmil", "musk1")]
    assert from_copies[("abmil", "musk1")]["summary"]["last"] == rows[("abmil", "musk1")]["summary"]["last"]
    text = table.render(rows, paths, out_root, "python benchmarks/classic_table.py")
    assert text.startswith(table.START) and text.rstrip().endswith(table.END)
    line = next(l for l in text.splitlines() if l.startswith("| `abmil` | 2-fold"))
    # the table's ± is the population SD of the folds' values, as first published (summary.json: the sample SD)
    assert acc["std"] == pytest.approx(statistics.stdev(acc["values"]))
    assert f"{acc['mean']:.3f} ± {statistics.pstdev(acc['values']):.3f}" in line
    assert "population standard deviation (n)" in text
    assert "0.892 ± 0.040" in line  # the published number beside it
    assert "| `dsmil` | not run yet |" in text
    doc = tmp_path / "results.md"
    doc.write_text("# hand-written intro\n\n" + table.START + "\nSTALE-TABLE\n" + table.END + "\n\nhand-written notes\n")
    table.write_doc(doc, text)
    written = doc.read_text()
    assert written.startswith("# hand-written intro") and written.rstrip().endswith("hand-written notes")
    assert "STALE-TABLE" not in written and written.count(table.START) == 1
