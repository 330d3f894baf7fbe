"""``milzoo report`` / ``embed`` / ``attention`` on small real runs: files, images, HTML and numbers."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import sys
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from milzoo.datasets.batch import Bag
from milzoo.cli import cli
from milzoo.cli.report import add_commands
from milzoo.datasets.base import BagListDataset
from milzoo.report import attention as att
from milzoo.report.common import RUN_COLORS, load_run
from milzoo.report.context import RunContext
from milzoo.report.embedding import run_embedding, sample_instances
from milzoo.report.html import write_report
from milzoo.runs.runner import run

add_commands(cli)
ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- runs


def _quickstart(**changes) -> dict:
    raw = tomllib.loads((ROOT / "recipes" / "quickstart.toml").read_text())
    for section, values in changes.items():
        if section == "pooling":
            raw[section] = values
        elif isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section].update(values)
        else:
            raw[section] = values
    raw["train"]["progress"] = False
    return raw


@pytest.fixture(scope="module")
def feature_runs(tmp_path_factory):
    """Two MUSK1 runs: ABMIL with a validation split (3 epochs) and mean pooling (2 epochs), 2-fold CV."""
    root = tmp_path_factory.mktemp("feature_runs")
    a = _quickstart(name="abmil-musk1", train={"epochs": 3}, protocol={"folds": 2, "val_fraction": 0.2})
    b = _quickstart(name="mean-musk1", train={"epochs": 2}, protocol={"folds": 2},
                    pooling={"name": "mean"})
    run(a, out=root / "abmil")
    run(b, out=root / "mean")
    return root / "abmil", root / "mean"


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(str(path) + ".gz", "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def _images(counts, seed):
    """Noise images; class c > 0 has a bright bar in row 2c (so the classes differ)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        if c:
            images[i, 2 * c: 2 * c + 2, 4:24] = 255
    return images, labels


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A tiny Fashion-MNIST-like run (generated idx files): cnn2 + ABMIL on bags of 6 images, holdout."""
    data = tmp_path_factory.mktemp("fmnist")
    for prefix, counts, seed in (("train", [60] + [6] * 9, 0), ("t10k", [40] + [3] * 9, 1)):
        x, y = _images(counts, seed)
        _write_idx(data / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(data / f"{prefix}-labels-idx1-ubyte", y)
    recipe = {
        "name": "tiny-fmnist", "seed": 0,
        "data": {"name": "fmnist_bags", "root": str(data), "bag_size": 6, "num_key": 2, "max_bags_per_class": 3},
        "encoder": {"name": "cnn2", "dim": 16},
        "pooling": {"name": "abmil"},
        "loss": [{"name": "bag_ce"}],
        "train": {"epochs": 2, "batch_size": 4, "progress": False},
        "protocol": {"kind": "holdout", "eval_splits": ["test"]},
    }
    out = tmp_path_factory.mktemp("image_run") / "run"
    run(recipe, out=out)
    return out


# --------------------------------------------------------------------------- helpers


class _Page(HTMLParser):
    """Collects <img> sources, table cells with data-* attributes and the text."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.cells: list[dict] = []
        self.text: list[str] = []
        self._cell: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "td" and any(k.startswith("data-") for k in a):
            self._cell = {k[5:]: v for k, v in a.items() if k.startswith("data-")}
            self._cell["text"] = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"] += data


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def check_png(data: bytes) -> np.ndarray:
    assert data[:8] == PNG_SIGNATURE
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.width > 200 and img.height > 150
    return np.asarray(img.convert("RGB"))


def embedded_pngs(page: _Page) -> list[bytes]:
    import base64

    prefix = "data:image/png;base64,"
    assert page.images and all(src.startswith(prefix) for src in page.images)
    return [base64.b64decode(src[len(prefix):]) for src in page.images]


def has_colour(rgb: np.ndarray, hex_colour: str, tol: int = 12, min_pixels: int = 30) -> bool:
    target = np.array([int(hex_colour[i: i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb.astype(int) - target).max(axis=-1) <= tol).sum()) >= min_pixels


def last_epoch_means(run_dir: Path, split: str) -> dict[str, float]:
    """Mean over folds of each fold's last-epoch record of ``split``, straight from metrics.jsonl."""
    latest = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["split"] == split and (r["fold"] not in latest or r["epoch"] >= latest[r["fold"]]["epoch"]):
            latest[r["fold"]] = r
    keys = {k for r in latest.values() for k in r} - {"fold", "epoch", "split", "threshold"}
    return {k: float(np.mean([r[k] for r in latest.values()])) for k in keys}


# --------------------------------------------------------------------------- report


def test_single_run_report_numbers_match(feature_runs):
    abmil, _ = feature_runs
    out = write_report([abmil], embed=False, attention=False)
    assert out == abmil / "report.html" and out.exists()
    page = parse(out)
    pngs = embedded_pngs(page)
    assert len(pngs) == 3  # curves of train, val and test
    for data in pngs:
        check_png(data)
    summary = json.loads((abmil / "summary.json").read_text())
    cells = [c for c in page.cells if "section" in c]
    shown = {(c["section"], c["split"], c["metric"]): c for c in cells}
    # every number of summary.json is in the table, shown rounded and stored unrounded
    for section in ("last", "selected"):
        for split, metrics in summary[section].items():
            for metric, stat in metrics.items():
                c = shown[(section, split, metric)]
                assert float(c["mean"]) == pytest.approx(stat["mean"], abs=1e-12)
                assert float(c["std"]) == pytest.approx(stat["std"], abs=1e-12)
                mean_txt, std_txt = c["text"].split(" ± ")
                assert float(mean_txt) == pytest.approx(stat["mean"], abs=5e-4)
                assert float(std_txt) == pytest.approx(stat["std"], abs=5e-4)
    opt = summary["best_epoch_on_test"]
    assert float(shown[("best_epoch_on_test", "test", "acc")]["mean"]) == pytest.approx(opt["acc"]["mean"])
    assert "OPTIMISTIC" in "".join(page.text)
    # and the last-epoch rows agree with metrics.jsonl itself
    for split in ("test", "val"):
        for metric, value in last_epoch_means(abmil, split).items():
            assert float(shown[("last", split, metric)]["mean"]) == pytest.approx(value, abs=1e-9)
    # the per-fold table repeats metrics.jsonl's last epochs exactly
    per_fold = [c for c in page.cells if "fold" in c]
    assert per_fold
    records = [json.loads(l) for l in (abmil / "metrics.jsonl").read_text().splitlines()]
    for c in per_fold:
        rec = [r for r in records if r["fold"] == int(c["fold"]) and r["split"] == c["split"]][-1]
        assert float(c["value"]) == rec[c["metric"]]
        assert float(c["text"]) == pytest.approx(rec[c["metric"]], abs=5e-4)
    text = "".join(page.text)
    assert 'name = "abmil"' in text and "scikit-learn" in text  # the resolved recipe and the versions


def test_two_runs_overlaid_through_the_cli(feature_runs, tmp_path, monkeypatch):
    abmil, mean = feature_runs
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["report", str(abmil), str(mean), "--method", "pca", "--max-instances", "60"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "report.html"
    assert out.exists()
    page = parse(out)
    text = "".join(page.text)
    assert "abmil-musk1" in text and "mean-musk1" in text
    assert "pooling.name" in text  # the recipe differences
    pngs = [check_png(p) for p in embedded_pngs(page)]
    # curves (train, val, test) + 2 representation maps + 2 attention views
    assert len(pngs) == 7
    test_curves = pngs[2]
    assert has_colour(test_curves, RUN_COLORS[0]) and has_colour(test_curves, RUN_COLORS[1])
    runs = {c["run"] for c in page.cells if "section" in c}
    assert runs == {"abmil-musk1", "mean-musk1"}
    mean_summary = json.loads((mean / "summary.json").read_text())
    cell = next(c for c in page.cells if c.get("run") == "mean-musk1" and c.get("section") == "last"
                and c["metric"] == "auc")
    assert float(cell["mean"]) == pytest.approx(mean_summary["last"]["test"]["auc"]["mean"])


def test_incomplete_run_and_unrebuildable_data(feature_runs, tmp_path):
    src, _ = feature_runs
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    (broken / "summary.json").unlink()
    with open(broken / "metrics.jsonl", "a") as fh:
        fh.write('{"fold": 1, "epoch": 3, "split": "te')  # a half-written line of a killed run
    recipe = (broken / "recipe.toml").read_text().replace('dataset = "musk1"', 'dataset = "no-such-set"')
    (broken / "recipe.toml").write_text(recipe)
    out = write_report([broken], tmp_path / "r.html", max_instances=50, method="pca")
    page = parse(out)
    text = " ".join(page.text)
    assert "no summary.json" in text
    assert "representation map skipped" in text and "attention view skipped" in text
    for metric, value in last_epoch_means(src, "test").items():
        cell = next(c for c in page.cells if c.get("section") == "last" and c["split"] == "test"
                    and c["metric"] == metric)
        assert float(cell["mean"]) == pytest.approx(value)


def test_final_rows_with_an_ensemble(feature_runs, tmp_path):
    from milzoo.report.html import final_rows, final_table

    run_data = load_run(feature_runs[1])
    run_data.label = "x"
    run_data.summary = {
        "num_folds": 5,
        "last": {"test": {"acc": {"mean": 0.8, "std": 0.1, "values": [0.7, 0.9]}}},
        "ensemble": {"test": {"acc": 0.875, "auc": 0.9, "f1": 0.5}},
    }
    rows = final_rows(run_data)
    assert [(r["section"], r["folds"]) for r in rows] == [("last", 2), ("ensemble", 5)]
    page = _Page()
    page.feed(final_table([run_data]))
    ens = {c["metric"]: c for c in page.cells if c["section"] == "ensemble"}
    assert float(ens["acc"]["mean"]) == 0.875 and ens["acc"]["text"] == "0.875"
    assert "vote" in "".join(page.text)


def test_not_a_run_directory_is_a_clean_error(tmp_path):
    res = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert res.exit_code == 2
    assert "not a milzoo run directory" in res.output
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- representation maps


def test_embed_both_methods(feature_runs, tmp_path):
    abmil, _ = feature_runs
    runner = CliRunner()
    for method in ("pca", "tsne"):
        out = tmp_path / f"{method}.png"
        res = runner.invoke(cli, ["embed", str(abmil), "--method", method, "--max-instances", "80", "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert ("t-SNE" if method == "tsne" else "PCA") in res.output
        check_png(out.read_bytes())
    res = runner.invoke(cli, ["embed", str(abmil), "--split", "nope"])
    assert res.exit_code == 2 and "no split 'nope'" in res.output


def test_embedding_sample_and_projection(feature_runs):
    abmil, _ = feature_runs
    ctx = RunContext(abmil)
    ds = ctx.dataset(1, "test")
    total = sum(len(ds[i]) for i in range(len(ds)))
    fig, emb = run_embedding(ctx, fold=1, split="test", max_instances=10**6, method="pca")
    assert len(emb.xy) == total  # everything when the budget allows
    assert emb.label_kind == "bag label" and set(emb.class_names) == {"negative", "positive"}
    labels = np.concatenate([[ds[i].y] * len(ds[i]) for i in range(len(ds))])
    assert np.bincount(emb.labels, minlength=2).tolist() == np.bincount(labels, minlength=2).tolist()
    model, which = ctx.model(1)
    assert which == "best"
    # the same fold model, the same seed: the same map
    _, again = run_embedding(ctx, fold=1, split="test", max_instances=10**6, method="pca")
    np.testing.assert_allclose(emb.xy, again.xy)


def test_sample_spreads_the_budget_over_bags():
    bags = [Bag(x=torch.randn(n, 3), y=i % 2, bag_id=f"b{i}", inst_y=torch.full((n,), i % 2))
            for i, n in enumerate([2, 50, 3, 40, 1, 30])]
    ds = BagListDataset(bags, ["a", "b"])
    s = sample_instances(ds, 30, seed=0)
    assert len(s.x) == 30 and s.n_bags == 6  # small bags give all they have, big ones share the rest
    counts = np.bincount(s.bag_positions, minlength=6)
    assert counts[0] == 2 and counts[2] == 3 and counts[4] == 1
    assert s.label_kind == "instance label"
    again = sample_instances(ds, 30, seed=0)
    assert torch.equal(s.x, again.x)


def test_image_embedding_coloured_by_instance_label(image_run, tmp_path):
    fig, emb = run_embedding(RunContext(image_run), split="test", max_instances=100, method="pca")
    assert emb.label_kind == "instance label"
    assert emb.class_names[0] == "T-shirt/top"
    assert (emb.labels >= 0).all() and len(set(emb.labels.tolist())) > 2


# --------------------------------------------------------------------------- attention


def test_attention_grid_for_image_bags(image_run, tmp_path):
    out = tmp_path / "grid.png"
    res = CliRunner().invoke(cli, ["attention", str(image_run), "--index", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "(images," in res.output
    rgb = check_png(out.read_bytes())
    assert rgb.shape[1] > 600  # one row of six framed images
    ctx = RunContext(image_run)
    model, _ = ctx.model(0)
    ds = ctx.dataset(0, "test")
    v = att.bag_view(model, ds, 2)
    assert v.value_name == "attention" and v.values.shape == (6,)
    assert v.values.sum() == pytest.approx(1.0, abs=1e-5)
    assert v.inst_true is not None and v.inst_pred is not None
    # default choice: the first bag not of class 0
    assert att.choose_bag(ds) == int(np.flatnonzero(ds.labels != 0)[0])
    bag_id = ds.bag_ids[3]
    res = CliRunner().invoke(cli, ["attention", str(image_run), "--bag", bag_id, "--out", str(tmp_path / "b.png")])
    assert res.exit_code == 0 and f"bag {bag_id}" in res.output
    res = CliRunner().invoke(cli, ["attention", str(image_run), "--bag", "nope"])
    assert res.exit_code == 2 and "no bag 'nope'" in res.output


def test_attention_bars_for_feature_bags(feature_runs, tmp_path):
    abmil, mean = feature_runs
    for run_dir in (abmil, mean):
        out = tmp_path / f"{run_dir.name}.png"
        res = CliRunner().invoke(cli, ["attention", str(run_dir), "--index", "0", "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert "(bars," in res.output
        check_png(out.read_bytes())


def _slide_view(model, inst_y=None):
    g = torch.stack(torch.meshgrid(torch.arange(6), torch.arange(5), indexing="ij"), -1).reshape(-1, 2) * 256
    bag = Bag(x=torch.randn(30, 166), y=1, bag_id="slide_0", coords=g, inst_y=inst_y)
    return att.bag_view(model, BagListDataset([bag], ["normal", "tumor"]), 0)


def test_slides_use_the_wsi_heatmap(feature_runs, monkeypatch):
    model, _ = RunContext(feature_runs[0]).model(0)
    view = _slide_view(model)
    calls = []
    import milzoo_wsi.localization as loc

    real = loc.draw_heatmap

    def spy(coords, values, out_png, *a, **kw):
        calls.append((np.asarray(coords).shape, np.asarray(values).shape))
        return real(coords, values, out_png, *a, **kw)

    monkeypatch.setattr(loc, "draw_heatmap", spy)
    png, kind = att.attention_png(view)
    assert kind == "heatmap" and calls == [((30, 2), (30,))]
    one = check_png(png)
    # with patch labels, the true-label map is drawn beside the attention
    labelled = _slide_view(model, inst_y=(torch.arange(30) % 7 == 0).long())
    png, kind = att.attention_png(labelled)
    assert len(calls) == 3
    two = check_png(png)
    assert two.shape[1] > 1.8 * one.shape[1]
    monkeypatch.setitem(sys.modules, "milzoo_wsi.localization", None)  # not installed: own scatter
    png, kind = att.attention_png(view)
    assert kind == "heatmap"
    check_png(png)


# --------------------------------------------------------------------------- the decision rule, one colour map


def test_report_and_attention_say_which_rule_gave_the_class(feature_runs, tmp_path):
    abmil, _ = feature_runs
    out = tmp_path / "r.html"
    write_report([abmil], out, embed=False)
    page = parse(out)
    text = " ".join(page.text)
    assert "Classes behind acc and F1" in text and "argmax" in text  # the recipe chose no threshold
    assert "decision rule: argmax" in text and "(p=" in text and ", argmax)" in text
    res = CliRunner().invoke(cli, ["attention", str(abmil), "--index", "0", "--out", str(tmp_path / "a.png")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[-2].startswith("predicted ") and lines[-2].endswith(", argmax)")
    assert lines[-1] == "decision rule: argmax"
    # a threshold recorded on validation decides instead, in the report's attention view too
    ctx = RunContext(abmil)
    model, _ = ctx.model(0)
    model.decision_threshold = 0.0  # every bag is class 1 now
    v = att.bag_view(model, ctx.dataset(0, "test"), 0)
    assert v.bag_pred == 1 and "threshold 0.000 chosen on validation" in att.prediction_text(v)
    assert v.rule.endswith("(threshold chosen on validation), else " + v.class_names[0])


def test_one_colour_map_for_attention_values(image_run):
    import matplotlib

    from milzoo.report.common import VALUE_CMAP

    ctx = RunContext(image_run)
    model, _ = ctx.model(0)
    v = att.bag_view(model, ctx.dataset(0, "test"), 2)
    rgb = check_png(att.attention_png(v)[0])
    top = int(np.argmax(v.values))
    frame = matplotlib.colormaps[VALUE_CMAP](v.values[top] / v.values.max())  # the top instance's frame colour
    assert has_colour(rgb, "#%02x%02x%02x" % tuple(int(round(c * 255)) for c in frame[:3]), tol=6, min_pixels=20)


# --------------------------------------------------------------------------- ROC curves, confusion matrices, one SD


def test_roc_and_confusion_matrices_agree_with_the_runs_own_numbers(feature_runs, tmp_path):
    from milzoo.report.roc import run_predictions

    abmil, _ = feature_runs
    out = write_report([abmil], tmp_path / "r.html", embed=False, attention=False)
    html = out.read_text()
    page = parse(out)
    assert html.count("<svg") == 1 and 'id="roc"' in html
    summary = json.loads((abmil / "summary.json").read_text())
    models = {m.which: m for m in run_predictions(abmil)}
    assert sorted(models) == ["best", "last"]
    for which, section in (("best", "selected"), ("last", "last")):
        m = models[which]
        # each fold's AUC of its predictions file is the AUC the run reported for that fold
        assert [m.roc()[0].aucs[f.fold] for f in m.folds] == pytest.approx(
            summary[section]["test"]["auc"]["values"], abs=1e-4)
        # the matrix counts every bag once per fold, and its diagonal is the folds' accuracies times their sizes
        cells = [c for c in page.cells if c.get("model") == which]
        counts = {(int(c["true"]), int(c["pred"])): int(c["count"]) for c in cells}
        assert sum(counts.values()) == m.num_bags
        right = sum(acc * len(f.y) for acc, f in zip(summary[section]["test"]["acc"]["values"], m.folds))
        assert counts[(0, 0)] + counts[(1, 1)] == round(right)
    # the legend's AUC is the final table's (mean ± the sample SD over folds)
    auc = summary["last"]["test"]["auc"]
    assert f"AUC {auc['mean']:.3f} ± {auc['std']:.3f}" in html
    assert "decision rule: argmax" in " ".join(page.text)


def test_one_standard_deviation_in_summary_table_and_report(feature_runs, tmp_path):
    abmil, _ = feature_runs
    summary = json.loads((abmil / "summary.json").read_text())
    assert summary["std_ddof"] == 1
    acc = summary["last"]["test"]["acc"]
    assert acc["std"] == pytest.approx(np.std(acc["values"], ddof=1), abs=1e-15)
    # a summary.json written before std_ddof (population SD) is shown with the sample SD of its values too
    legacy = tmp_path / "legacy"
    shutil.copytree(abmil, legacy)
    old = json.loads((legacy / "summary.json").read_text())
    del old["std_ddof"]
    old["last"]["test"]["acc"]["std"] = float(np.std(acc["values"]))
    (legacy / "summary.json").write_text(json.dumps(old))
    page = parse(write_report([legacy], tmp_path / "r.html", embed=False, attention=False))
    cell = next(c for c in page.cells if c.get("section") == "last" and c["split"] == "test" and c["metric"] == "acc")
    assert float(cell["std"]) == pytest.approx(acc["std"], abs=1e-12)
    assert "Mean ± sample standard deviation (n − 1) over folds" in " ".join(" ".join(page.text).split())
