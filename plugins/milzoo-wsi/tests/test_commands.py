"""``milzoo features convert|split`` and ``milzoo localize`` through click's CliRunner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from click.testing import CliRunner

from milzoo.cli import cli
from milzoo.cli._app import _add_plugin_commands
from milzoo_wsi.synthetic import make_synthetic_slides

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runner():
    _add_plugin_commands()
    assert "features" in cli.commands and "localize" in cli.commands
    return CliRunner()


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- features convert


def test_convert_writes_safetensors_and_reports_bad_slides(runner, tmp_path, wr):
    src, dst = tmp_path / "h5", tmp_path / "st"
    for i in range(3):
        feats, coords = wr.feats(i, 5 + i, 4)
        wr.slide(str(src / f"s{i}.h5"), feats, coords)
    res = runner.invoke(cli, ["features", "convert", str(src), str(dst)])
    assert res.exit_code == 0, res.output
    assert "3 slides converted" in res.output and "D = 4" in res.output
    assert sorted(p.name for p in dst.iterdir()) == ["s0.safetensors", "s1.safetensors", "s2.safetensors"]
    from milzoo_wsi.stores import read_slide, slide_file

    got = read_slide(slide_file(str(dst / "s1.safetensors")))
    assert got.features.dtype.is_floating_point and got.features.element_size() == 2  # fp16
    np.testing.assert_array_equal(got.features.float().numpy(), wr.feats(1, 6, 4)[0].astype(np.float16))
    assert got.coords is not None

    # a truncated file: exit code 2, the slide named, the others still converted, no traceback
    (src / "s3.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    res = runner.invoke(cli, ["features", "convert", str(src), str(dst), "--dtype", "float32"])
    assert res.exit_code == 2
    assert "s3" in res.output and "Traceback" not in res.output
    assert "3 already there" in res.output
    res = runner.invoke(cli, ["features", "convert", str(tmp_path / "nowhere"), str(dst)])
    assert res.exit_code == 2 and "does not exist" in res.output


# --------------------------------------------------------------------------- a tiny trained run


def _tiny_recipe(info: dict, **protocol) -> dict:
    return {
        "name": "tiny_wsi",
        "seed": 0,
        "data": {"name": "slides", "features": info["features"], "table": info["table"],
                 "class_names": ["normal", "tumor"], "load_workers": 1},
        "encoder": {"name": "mlp", "dims": [8]},
        "pooling": {"name": "abmil", "attn_hidden": 8},
        "loss": [{"name": "bag_ce"}],
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 2, "progress": False, "threads": 1},
        "protocol": {"kind": "cv_ensemble", "folds": 2, "threshold": "youden", "monitor": "auc", **protocol},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from milzoo.runs.runner import run

    root = tmp_path_factory.mktemp("wsi-cli")
    info = make_synthetic_slides(str(root / "data"), n_slides=10, mean_patches=12, dim=6, seed=3, n_test=4,
                                 signal=3.0, slides_per_patient=2)
    recipe = root / "tiny.toml"
    recipe.write_text(tomli_w.dumps(_tiny_recipe(info)))
    run_dir = root / "run"
    summary = run(str(recipe), out=run_dir, progress=False)
    assert "ensemble" in summary
    return {"info": info, "recipe": recipe, "run": run_dir, "root": root}


def test_localize_a_run_fold(runner, trained):
    from milzoo_wsi.stores import read_slide, slide_file

    run_dir = trained["run"]
    res = runner.invoke(cli, ["localize", str(run_dir), "--fold", "1"])
    assert res.exit_code == 0, res.output
    out = run_dir / "localization" / "fold-01" / "test"
    index = _rows(out / "slides.csv")
    test_ids = [r["slide_id"] for r in _rows(Path(trained["info"]["table"])) if r["split"] == "test"]
    assert sorted(r["slide_id"] for r in index) == sorted(test_ids)
    thr = json.loads((run_dir / "fold-01" / "best" / "config.json").read_text())["threshold"]
    for r in index:
        # the decision uses the fold's validation threshold, not the argmax
        assert r["pred"] == ("tumor" if float(r["p_tumor"]) >= thr else "normal")
        table = _rows(out / f"{r['slide_id']}.csv")
        n = read_slide(slide_file(f"{trained['info']['features']}/{r['slide_id']}.safetensors")).num_patches
        assert len(table) == n and [int(t["patch"]) for t in table] == list(range(n))
        assert {"slide_id", "patch", "x", "y", "attention", "score_normal", "score_tumor"} <= set(table[0])
        att = np.array([float(t["attention"]) for t in table])
        assert att.sum() == pytest.approx(1.0, abs=1e-4)
        assert (out / f"{r['slide_id']}.png").read_bytes()[:8] == PNG

    # one slide, from the training part of fold 0, tables only
    train_id = _rows(run_dir / "fold-00" / "best" / "predictions-val.csv")[0]["bag_id"]
    res = runner.invoke(cli, ["localize", str(run_dir), "--split", "val", "--slide", train_id, "--no-heatmaps",
                              "--out", str(trained["root"] / "one")])
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in (trained["root"] / "one").iterdir())
    assert files == sorted([f"{train_id}.csv", "slides.csv"])


def test_localize_errors_exit_2(runner, trained):
    run_dir = str(trained["run"])
    for args, needle in [
        (["--split", "nope"], "is not available"),
        (["--fold", "7"], "out of range"),
        (["--slide", "no_such_slide"], "no_such_slide"),
    ]:
        res = runner.invoke(cli, ["localize", run_dir, *args])
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output and "Traceback" not in res.output
    ckpt_dir = str(trained["run"] / "fold-00" / "best")
    res = runner.invoke(cli, ["localize", ckpt_dir, "--out", str(trained["root"] / "x")])
    assert res.exit_code == 2 and "--features" in res.output


def test_localize_a_checkpoint_on_every_slide_of_a_table(runner, trained):
    info, out = trained["info"], trained["root"] / "ckpt-loc"
    res = runner.invoke(cli, ["localize", str(trained["run"] / "fold-00" / "best"), "--features", info["features"],
                              "--table", info["table"], "--out", str(out), "--no-heatmaps"])
    assert res.exit_code == 0, res.output
    index = _rows(out / "slides.csv")
    assert len(index) == 14 and {r["split"] for r in index} == {"train", "test"}
    assert len(list(out.glob("slide_*.csv"))) == 14 and not list(out.glob("*.png"))


def test_localize_a_pretrained_ensemble(runner, trained):
    hub = pytest.importorskip("milzoo.hub")
    if not hasattr(hub, "save_pretrained"):
        pytest.skip("milzoo.hub has no save_pretrained")
    folder = trained["root"] / "hub-folder"
    hub.save_pretrained(trained["run"], folder)
    info, out = trained["info"], trained["root"] / "ens-loc"
    res = runner.invoke(cli, ["localize", str(folder), "--features", info["features"], "--table", info["table"],
                              "--split", "test", "--out", str(out)])
    assert res.exit_code == 0, res.output
    index = _rows(out / "slides.csv")
    assert len(index) == 4
    # the ensemble's attention is the mean of the 2 members': still a distribution over the patches
    table = _rows(out / f"{index[0]['slide_id']}.csv")
    assert sum(float(t["attention"]) for t in table) == pytest.approx(1.0, abs=1e-4)


# --------------------------------------------------------------------------- features split


def test_split_writes_the_runs_test_split(runner, tmp_path, trained):
    info = trained["info"]
    table = tmp_path / "no_split.csv"
    rows = _rows(Path(info["table"]))
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["slide_id", "label", "patient_id"], lineterminator="\n")
        w.writeheader()
        w.writerows({k: r[k] for k in ("slide_id", "label", "patient_id")} for r in rows)
    recipe = tmp_path / "r.toml"
    d = _tiny_recipe(info)
    d["data"].update(table=str(table), test_fraction=0.25, split_seed=5, features="/does/not/exist")
    recipe.write_text(tomli_w.dumps(d))
    out = tmp_path / "split.csv"
    res = runner.invoke(cli, ["features", "split", str(recipe), str(out)])
    assert res.exit_code == 0, res.output  # the feature folder is never touched
    got = _rows(out)
    assert [r["slide_id"] for r in got] == [r["slide_id"] for r in rows]
    by_patient: dict[str, set] = {}
    for r in got:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())  # patients are never split
    n_test_pat = sum(1 for s in by_patient.values() if s == {"test"})
    assert n_test_pat == round(0.25 * len(by_patient)) or n_test_pat == int(np.ceil(0.25 * len(by_patient)))
    # the same seed gives the same split; another seed another one
    res2 = runner.invoke(cli, ["features", "split", str(recipe), str(tmp_path / "b.csv")])
    assert res2.exit_code == 0 and _rows(tmp_path / "b.csv") == got
    res3 = runner.invoke(cli, ["features", "split", str(recipe), str(tmp_path / "c.csv"), "--set",
                               "data.split_seed=6"])
    assert res3.exit_code == 0
    assert [r["split"] for r in _rows(tmp_path / "c.csv")] != [r["split"] for r in got]


# --------------------------------------------------------------------------- one decision rule, slide images


def _decision_line(output: str, prefix: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip().startswith(prefix)]
    assert len(lines) == 1, output
    return lines[0]


def test_localize_attention_and_predict_agree_and_print_the_same_rule(runner, trained, tmp_path):
    """One model and slide: `localize`, `attention` and `model.predict` give the same class by the same rule.

    The recorded threshold is moved so that it and the argmax disagree on this slide: all three must follow
    the threshold (the bug was `localize` thresholding and `attention` taking the argmax).
    """
    import shutil

    from milzoo.cli.report import add_commands
    from milzoo.datasets.batch import collate_bags
    from milzoo.model.decision import model_decisions, rule_text
    from milzoo.report.context import RunContext

    add_commands(cli)
    run_dir = tmp_path / "run"
    shutil.copytree(trained["run"], run_dir)
    ctx = RunContext(run_dir)
    ds = ctx.dataset(0, "test")
    sid, bag = ds.bag_ids[0], ds[0]
    model, which = ctx.model(0)
    assert which == "best"
    p_tumor = float(model.predict(collate_bags([bag])).bag_probs[0, 1])
    argmax = int(p_tumor >= 0.5)
    threshold = p_tumor - 1e-3 if argmax == 0 else p_tumor + 1e-3  # the threshold decides the other class
    cfg_path = run_dir / "fold-00" / "best" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "threshold": threshold}))

    res = runner.invoke(cli, ["localize", str(run_dir), "--fold", "0", "--slide", sid])
    assert res.exit_code == 0, res.output
    loc = _decision_line(res.output, f"{sid}:")[len(sid) + 1:].strip()
    loc_rule = _decision_line(res.output, "decision rule:")

    res = runner.invoke(cli, ["attention", str(run_dir), "--fold", "0", "--bag", sid,
                              "--out", str(tmp_path / "a.png")])
    assert res.exit_code == 0, res.output
    att = _decision_line(res.output, "predicted ")
    att_rule = _decision_line(res.output, "decision rule:")

    model, _ = RunContext(run_dir).model(0)
    out = model.predict(collate_bags([bag]))
    (pred,) = model_decisions(model, out)

    expected = ["normal", "tumor"][1 - argmax]
    assert loc == att == pred.text
    assert pred.class_name == expected and int(out.extras["pred"][0]) == 1 - argmax
    assert f"threshold {threshold:.3f} chosen on validation" in loc
    assert loc_rule == att_rule == f"decision rule: {rule_text(model)}" == \
        f"decision rule: {out.extras['decision_rule']}"
    index = _rows(run_dir / "localization" / "fold-00" / "test" / "slides.csv")
    assert index[0]["pred"] == expected and index[0]["decision"] == pred.reason


def _tissue_tiff(path, coords, margin=300):
    """A pyramidal TIFF of a slide: pink tissue under its patches, on grey glass."""
    tifffile = pytest.importorskip("tifffile")
    w, h = int(coords[:, 0].max()) + 256 + margin, int(coords[:, 1].max()) + 256 + margin
    img = np.full((h, w, 3), 235, np.uint8)
    for x, y in coords:
        img[y: y + 256, x: x + 256] = (190, 110, 180)
    with tifffile.TiffWriter(str(path)) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", subifds=0)
        for f in (4, 16):
            tw.write(np.ascontiguousarray(img[::f, ::f]), tile=(256, 256), photometric="rgb", subfiletype=1)
    return str(path)


def test_localize_and_attention_over_slide_images(runner, trained, tmp_path, monkeypatch):
    from milzoo.cli.report import add_commands
    from milzoo_wsi import slide_images
    from milzoo_wsi.stores import read_slide, slide_file

    pytest.importorskip("tifffile")
    if slide_images.available_reader() is None:
        pytest.skip("no slide reader (pip install 'milzoo-wsi[slides]')")
    add_commands(cli)
    info, run_dir = trained["info"], trained["run"]
    test_ids = sorted(r["slide_id"] for r in _rows(Path(info["table"])) if r["split"] == "test")
    images = tmp_path / "images"
    images.mkdir()
    coords, files = {}, {}
    for sid, ext in zip(test_ids[:2], (".tiff", ".tif")):  # images of two of the four test slides
        coords[sid] = read_slide(slide_file(f"{info['features']}/{sid}.safetensors")).coords.numpy()
        files[sid] = _tissue_tiff(images / f"{sid}{ext}", coords[sid])
    out = tmp_path / "loc"
    res = runner.invoke(cli, ["localize", str(run_dir), "--slides", str(images), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "4 heatmaps (2 over the slide image), 4 GeoJSON files" in res.output
    assert f"note: no image of slide {test_ids[2]!r}" in res.output
    index = {r["slide_id"]: r for r in _rows(out / "slides.csv")}
    for sid in test_ids:
        assert index[sid]["slide_image"] == files.get(sid, "")
        assert (out / f"{sid}.png").read_bytes()[:8] == PNG
        fc = json.loads((out / f"{sid}.geojson").read_text())
        table = _rows(out / f"{sid}.csv")
        assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(table)
        for feat, row in zip(fc["features"], table):
            ring = feat["geometry"]["coordinates"][0]
            assert ring[0] == [float(row["x"]), float(row["y"])] and ring[2] == [float(row["x"]) + 256,
                                                                              float(row["y"]) + 256]
            assert feat["properties"]["objectType"] == "detection"
            assert feat["properties"]["measurements"]["attention"] == pytest.approx(float(row["attention"]))
            assert feat["properties"]["measurements"]["score_tumor"] == pytest.approx(float(row["score_tumor"]))

    sid = test_ids[0]
    res = runner.invoke(cli, ["attention", str(run_dir), "--bag", sid, "--slides", str(images),
                              "--out", str(tmp_path / "att.png")])
    assert res.exit_code == 0, res.output
    assert f"over {files[sid]}" in res.output
    fc = json.loads((tmp_path / "att.geojson").read_text())
    assert len(fc["features"]) == len(coords[sid])
    assert sum(f["properties"]["measurements"]["attention"] for f in fc["features"]) == pytest.approx(1.0, abs=1e-4)

    # without a reader: today's grid, and a note that says what to install
    monkeypatch.setattr(slide_images, "available_reader", lambda: None)
    res = runner.invoke(cli, ["localize", str(run_dir), "--slides", str(images), "--slide", sid,
                              "--out", str(tmp_path / "noreader")])
    assert res.exit_code == 0, res.output
    assert "(0 over the slide image)" in res.output and 'pip install "milzoo-wsi[slides]"' in res.output
    res = runner.invoke(cli, ["attention", str(run_dir), "--bag", sid, "--slides", str(images),
                              "--out", str(tmp_path / "att2.png")])
    assert res.exit_code == 0 and 'note: the heatmaps are drawn on the patch grid: install' in res.output
