"""The report's ROC curves and confusion matrices (milzoo/report/roc.py), its templates and its escaping."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from milzoo.checkpoint.predictions import write_predictions
from milzoo.metrics import bag_metrics, binary_auc
from milzoo.report import roc
from milzoo.report.html import build_report

ROOT = Path(__file__).resolve().parents[1]


class _Cells(HTMLParser):
    """The data-* attributes of every table cell that has them, the text, and the inline SVG elements."""

    def __init__(self):
        super().__init__()
        self.cells: list[dict] = []
        self.svgs = 0
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.svgs += tag == "svg"
        a = dict(attrs)
        if tag == "td" and any(k.startswith("data-") for k in a):
            self.cells.append({k[5:]: v for k, v in a.items() if k.startswith("data-")})

    def handle_data(self, data):
        self.text.append(data)


def _page(html: str) -> _Cells:
    p = _Cells()
    p.feed(html)
    p.close()
    return p


def _fake_run(root: Path, folds: dict[int, dict[str, tuple]], classes=("negative", "positive"), name="fake") -> Path:
    """A run directory whose checkpoints kept only predictions files: ``folds[f][which] = (y, probs[, threshold])``."""
    (root / "recipe.toml").parent.mkdir(parents=True, exist_ok=True)
    (root / "recipe.toml").write_text(f'name = "{name}"\n[data]\nname = "classic"\n[pooling]\nname = "mean"\n')
    for fold, models in folds.items():
        for which, (y, probs, *threshold) in models.items():
            folder = root / f"fold-{fold:02d}" / which
            folder.mkdir(parents=True, exist_ok=True)
            preds = {"bag_ids": [f"b{i}" for i in range(len(y))], "y": np.asarray(y), "probs": np.asarray(probs)}
            write_predictions(folder, "test", preds, [f"p_{c}" for c in classes])
            (folder / "config.json").write_text(json.dumps({"threshold": threshold[0] if threshold else None}))
    return root


# --------------------------------------------------------------------------- the numbers


def test_roc_points_are_scikit_learns_and_their_area_is_the_runs_auc():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(bool)
    score = np.round(rng.random(200) + 0.3 * y, 2)  # ties on purpose
    fpr, tpr = roc.roc_points(y, score)
    sk_fpr, sk_tpr, _ = roc_curve(y, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(binary_auc(y, score), abs=1e-12)
    assert roc.roc_points(np.ones(5, bool), np.arange(5.0)) is None  # one class: no curve


def test_the_mean_curve_is_the_vertical_mean_from_the_origin():
    a = (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0]))  # perfect
    b = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))  # chance
    fpr, tpr = roc.mean_curve([a, b])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    at = np.searchsorted(fpr[1:], 0.25) + 1
    assert fpr[at] == 0.25 and tpr[at] == pytest.approx((1.0 + 0.25) / 2)
    assert tpr[1] == pytest.approx(0.5)  # at fpr 0 the perfect curve is at its top


def test_confusion_matrix_follows_the_recorded_threshold_else_argmax(tmp_path):
    y = [0, 0, 0, 1, 1, 1]
    p1 = np.array([0.1, 0.5, 0.7, 0.4, 0.8, 0.95])
    probs = np.stack([1 - p1, p1], 1)
    run = _fake_run(tmp_path / "run", {0: {"best": (y, probs, 0.75), "last": (y, probs)},
                                       1: {"best": (y, probs, 0.3), "last": (y, probs)}})
    best, last = roc.run_predictions(run)
    assert (best.which, last.which) == ("best", "last") and best.split == "test"
    # fold 0 at 0.75: predicted 1 for 0.8, 0.95; fold 1 at 0.3: 0.5, 0.7, 0.4, 0.8, 0.95
    assert best.confusion().tolist() == [[3 + 1, 0 + 2], [1 + 0, 2 + 3]]
    assert "each fold's threshold chosen on validation (0.750, 0.300)" in best.rule()
    # argmax (p1 > 0.5; 0.5 ties go to class 0) in both folds
    assert last.confusion().tolist() == [[2 * 2, 2 * 1], [2 * 1, 2 * 2]] and last.rule() == "argmax"
    assert [c.aucs for c in last.roc()] == [{0: binary_auc(np.array(y) == 1, p1), 1: binary_auc(np.array(y) == 1, p1)}]


def test_more_classes_are_one_vs_rest_and_average_to_the_macro_auc(tmp_path):
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 8)
    logits = rng.normal(size=(24, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    run = _fake_run(tmp_path / "run", {0: {"last": (y, probs)}}, classes=("a", "b", "c"))
    (last,) = roc.run_predictions(run)
    curves = last.roc()
    assert [c.class_name for c in curves] == ["a", "b", "c"]
    macro = np.mean([c.aucs[0] for c in curves])
    assert macro == pytest.approx(bag_metrics(y, probs)["auc"], abs=1e-5)  # the file keeps 6 digits
    assert roc.macro_auc_text(curves) == f"macro AUC {macro:.3f}"
    counts = last.confusion()
    assert counts.sum() == 24 and counts.trace() == int((probs.argmax(1) == y).sum())
    assert counts[2, 0] == int(((y == 2) & (probs.argmax(1) == 0)).sum())


def test_runs_without_class_predictions_get_no_roc_section(tmp_path):
    run = tmp_path / "reg"
    (run / "fold-00" / "last").mkdir(parents=True)
    (run / "recipe.toml").write_text('name = "reg"\n[task]\nname = "regression"\n')
    (run / "fold-00" / "last" / "predictions-test.csv").write_text("bag_id,target,pred\nb0,1.5,1.2\n")
    assert roc.run_predictions(run) == []
    html = build_report([run], embed=False, attention=False)
    assert 'id="roc"' not in html and "ROC curves" not in html


def test_split_choice_and_a_damaged_file_is_a_note(tmp_path):
    y, probs = [0, 1], np.array([[0.8, 0.2], [0.3, 0.7]])
    run = _fake_run(tmp_path / "run", {0: {"last": (y, probs)}})
    assert roc.choose_split(run, "test") == "test" and roc.choose_split(run, "holdout") == "test"
    (run / "fold-00" / "last" / "predictions-test.csv").write_text("bag_id,label,p_negative,p_positive\nb0,0,x,1\n")
    page = _page(build_report([run], embed=False, attention=False))
    text = " ".join(page.text)
    assert "the ROC curves and confusion matrices skipped" in text and "is damaged" in text


# --------------------------------------------------------------------------- the page


HOSTILE = "<script>alert('x')</script> & \"q\" $\\frac{$"


def test_hostile_names_are_escaped_everywhere(tmp_path):
    y, probs = [0, 1, 0, 1], np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.9, 0.1]])
    run = _fake_run(tmp_path / "run", {0: {"best": (y, probs), "last": (y, probs)}}, classes=(HOSTILE, "<b>pos"))
    html = build_report([run], labels=[HOSTILE], embed=False, attention=False)
    assert "<script>" not in html and "<b>pos" not in html
    assert "&lt;script&gt;alert(" in html and "&lt;b&gt;pos" in html
    page = _page(html)
    assert "script" not in page.tags
    assert HOSTILE in page.text and "<b>pos" in page.text  # shown as written: the class names' header cells
    assert page.svgs == 1  # the ROC figure drew (a "$\frac{" in a name is text, not mathtext)
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert "&lt;script&gt;" in svg and "<script" not in svg
    cells = [c for c in page.cells if c.get("model") == "last"]
    assert {c["run"] for c in cells} == {HOSTILE}  # attributes come back unescaped, exactly


def test_templates_are_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"report/templates/*.j2"' in text and '"report/templates/*.css"' in text
    names = sorted(p.name for p in (ROOT / "milzoo" / "report" / "templates").iterdir())
    assert names == ["parts.html.j2", "report.css", "report.html.j2"]


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="no headless Chromium on this machine")
def test_the_page_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    y = [0, 1] * 6
    p1 = np.linspace(0.05, 0.95, 12)
    run = _fake_run(tmp_path / "run", {0: {"last": (y, np.stack([1 - p1, p1], 1))}})
    page = tmp_path / "r.html"
    page.write_text(build_report([run], embed=False, attention=False))
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    shot = tmp_path / "shot.png"
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--window-size=1000,1400", f"--screenshot={shot}", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.exists(), res.stderr
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blue = np.abs(rgb - np.array([0x1F, 0x77, 0xB4])).max(-1) <= 20  # the run's colour: the drawn ROC curve
    assert blue.sum() > 200
    green = np.abs(rgb - np.array([0xE8, 0xF3, 0xEA])).max(-1) <= 3  # the confusion matrix's diagonal cells
    assert green.sum() > 200
