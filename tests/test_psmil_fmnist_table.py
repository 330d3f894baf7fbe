"""benchmarks/psmil_fmnist_table.py, the builder of docs/results-psmil.md: the committed page is exactly what the
builder writes from the committed runs it names (no drift, no hand-edited number inside a generated block), and
the bag-draw / PSAli tables show pending cells, partial runs, spreads over draws and orderings as runs arrive."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def table():
    return _load("psmil_fmnist_table", ROOT / "benchmarks" / "psmil_fmnist_table.py")


@pytest.fixture(scope="module")
def page(table):
    return table.DOC.read_text()


def test_page_is_what_the_builder_writes_from_its_runs(table, page):
    named = table.page_runs(page)
    assert named, "the page names the runs it was built from"
    rebuilt = table.build(page, only=named)
    assert rebuilt == page, ("docs/results-psmil.md differs from what benchmarks/psmil_fmnist_table.py writes from "
                             "the runs it names: rebuild it with --write, never edit a generated block by hand")


def test_every_named_run_is_committed(table, page):
    for job in table.page_runs(page):
        assert (table.SNAP / job / "metrics.jsonl").is_file(), job


def test_check_reports_a_changed_number(table, page):
    marker = "**74.61 ± 1.52 %**"
    if marker not in page:
        pytest.skip("the headline number changed; the drift check is covered by the test above")
    assert any(p.startswith("drift") for p in table.check(page.replace(marker, "**75.61 ± 1.52 %**", 1)))


def test_draw_jobs_are_the_queues(table):
    queue = _load("psmil_fmnist_queue", ROOT / "benchmarks" / "psmil_fmnist_queue.py")
    for _, model in table.DRAW_MODELS:
        for d in table.DRAWS[1:]:
            assert table.draw_job(model, d) in queue.JOBS
            assert f"data.seed={d}" in queue.JOBS[table.draw_job(model, d)][1]
    for _, _, _, pp in table.PSALI_PAIRS:
        for d in table.PSALI_DRAWS:
            recipe, sets = queue.JOBS[table.nofreeze_job(pp, d)]
            assert recipe.endswith(f"{pp}.toml") and "loss.1.freeze_encoder_epochs=0" in sets
            assert f"data.seed={d}" in sets


def test_missing_draws_are_pending_with_their_command(table, page, monkeypatch):
    monkeypatch.setattr(table, "ceiling_counts", lambda: None)
    named = {j for j in table.page_runs(page) if not j.startswith("draw")}
    monkeypatch.setattr(table, "ONLY", named)
    draws, psali = table.draws_block(), table.psali_block()
    for _, model in table.DRAW_MODELS:
        for d in table.DRAWS[1:]:
            cmd = table.PENDING.format(job=table.draw_job(model, d))
            assert f"pending: `{cmd}`" in draws
    for _, _, _, pp in table.PSALI_PAIRS:
        for d in table.PSALI_DRAWS:
            assert table.PENDING.format(job=table.nofreeze_job(pp, d)) in psali
    assert "no ordering has been tested" in draws
    assert "confounded" in psali


def _copy_run(src: Path, dst: Path, *, finished: bool = True) -> None:
    if dst.exists():  # a stand-in replaces a real draw run that the page already names
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ("metrics.jsonl", "run.json", "recipe.toml", "machine.json") + (("summary.json",) if finished else ()):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def test_finished_draws_give_spreads_orderings_and_psali_effects(table, page, tmp_path, monkeypatch):
    """Stand-in draws (copies of committed seed runs under the draw jobs' names, only to drive the code paths
    that real draws will take): per-draw cells, mean ± SD over draws, gap signs, orderings, PSAli pairs, and a
    partial run shown as partial and pending."""
    snap = tmp_path / "fmnist"
    for job in table.page_runs(page):
        if not job.startswith("draw"):  # the draws below are the stand-ins only, whatever has finished for real
            _copy_run(table.SNAP / job, snap / job)
    stand_in = {"psmil": "psmil-seed1", "abmil": "abmil-seed1", "psmil_lam0": "psmil_lam0-seed1",
                "demil": "demil-seed1", "dtfd": "dtfd", "supervised": "supervised"}
    for model, src in stand_in.items():
        _copy_run(table.SNAP / src, snap / table.draw_job(model, 1))
    _copy_run(table.SNAP / "psmil-seed2", snap / table.draw_job("psmil", 2), finished=False)
    _copy_run(table.SNAP / "abmil_pp", snap / table.nofreeze_job("abmil_pp", 0))
    monkeypatch.setattr(table, "SOURCES", (snap,))
    monkeypatch.setattr(table, "ONLY", None)
    monkeypatch.setattr(table, "ceiling_counts", lambda: None)

    draws, psali = table.draws_block(), table.psali_block()
    values = {m: table.draw_values(m) for _, m in table.DRAW_MODELS}
    assert set(values["psmil"]) == {0, 1}
    # metrics without summary.json: not counted, still pending
    assert "partial (20 epochs recorded, no summary.json) (unfinished)" in draws
    assert f"pending: `{table.PENDING.format(job='draw2/psmil')}`" in draws
    mean_sd = table.ms([values["psmil"][0], values["psmil"][1]])
    assert f"{mean_sd} (n=2)" in draws
    assert "over 2 draws" in table.gaps_over_draws()
    gap = [values["psmil"][d] - values["abmil"][d] for d in (0, 1)]
    assert f"**PSMIL − ABMIL**: {gap[0]:+.2f} on draw 0, {gap[1]:+.2f} on draw 1; mean ± SD over 2 draws" in draws
    assert "**Orderings over draws** (pairs with at least two finished draws)" in draws
    effect = table.last(table.done("draw0/abmil_pp-nofreeze")) - table.last(table.done("abmil"))
    assert f"{effect:+.2f} points on draw 0 (1 of 2 draws finished)" in psali

    doc = table.build(page)
    assert table.page_runs(doc) >= {"draw1/psmil", "draw2/psmil", "draw0/abmil_pp-nofreeze"}
    monkeypatch.setattr(table, "SOURCES", (table.SNAP,))
    problems = table.check(doc)  # the committed runs lack the stand-ins: the page no longer follows from them
    assert problems and problems[0].startswith("drift")


def test_cpu_names(table):
    s = {"cpu": "Intel(R) Xeon(R) Processor", "avx512": True, "avx512_bf16": True}
    assert table._cpu_name(s) == "Intel Xeon, AVX-512 + bf16"
    assert table._cpu_name({"cpu": "AMD EPYC", "avx512": False}) == "AMD EPYC, AVX2"
    rec = {"info": {"command": ["milzoo", "run", "--set", "train.threads=1"]}, "recipe": 'precision = "auto"\n'}
    assert table.precision(rec, s) == "bf16"
    assert table.precision(rec, {"avx512_bf16": False}) == "fp32"
    rec["info"]["command"] += ["--set", "train.precision=fp32"]
    assert table.precision(rec, s) == "fp32"
    two = {"job": "x", "info": {}, "recipe": "", "machine": {"sessions": [{"cpu": "AMD EPYC"}, s]}}
    assert "then" in table.cpu(two) and "resumed" in table.cpu(two)
    assert table.cpu({"job": "y", "info": {}, "recipe": "", "machine": {}}) == "not recorded"


def test_runs_compare_by_cpu_type_not_by_who_recorded_it(table):
    """A machine.json written by a later queue (same CPU) is one CPU type with the run that wrote its own."""
    epyc = {"cpu": "AMD EPYC", "cores": 2, "avx512": True, "avx512_bf16": True}
    own = {"info": {"command": ["--set", "train.precision=fp32"]}, "machine": {"sessions": [epyc]}}
    later = {"info": {"command": ["--set", "train.precision=fp32"]},
             "machine": {"sessions": [{**epyc, "note": "snapshot taken after the run, by a later queue"}]}}
    avx2 = {"info": {"command": ["--set", "train.precision=fp32"]},
            "machine": {"sessions": [{"cpu": "AMD EPYC", "avx512": False}]}}
    assert table.cpu(later) == "AMD EPYC, AVX-512 + bf16, fp32 (recorded by a later queue)"
    assert table.cpu_type(own) == table.cpu_type(later) == "AMD EPYC, AVX-512 + bf16, fp32"
    assert table.cpu_type(avx2) == "AMD EPYC, AVX2, fp32" != table.cpu_type(own)
    assert table.two_types([own, later]) == "" and table.two_types([own, avx2]) == " (runs on 2 CPU types)"
