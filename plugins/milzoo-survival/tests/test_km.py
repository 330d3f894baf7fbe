"""The Kaplan-Meier report: the cut-off comes from the validation bags, never the test bags."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from milzoo.errors import DataError, RunDirError

from milzoo_survival.commands import survival_group
from milzoo_survival.km import km_report, km_report_for_run


def _test_split(seed=0, n=200, shift=0.0):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n) + shift
    time = rng.exponential(1 / np.exp(risk - shift))
    event = (rng.random(n) < 0.7).astype(float)
    return time, event, risk


def test_cutoff_is_the_median_of_validation_risk_not_of_test():
    time, event, risk = _test_split(shift=3.0)  # test risks centred on 3
    val_risk = np.random.default_rng(1).normal(size=50) + 3.5  # validation risks centred on 3.5
    rep = km_report(val_risk, time, event, risk)
    assert rep.cutoff == pytest.approx(float(np.median(val_risk)))
    assert rep.cutoff != pytest.approx(float(np.median(risk)), abs=0.05)  # a test-chosen cut-off would differ
    assert rep.cutoff_split == "val"
    assert rep.n_high == int((risk > np.median(val_risk)).sum()) and rep.n_low + rep.n_high == len(risk)
    assert rep.n_high != len(risk) // 2  # the test groups are not halves: the median was not taken on test
    assert 0 <= rep.p_value < 1e-3 and rep.png.startswith(b"\x89PNG")


def test_test_predictions_do_not_move_the_cutoff():
    time, event, risk = _test_split()
    val_risk = np.linspace(-1, 1, 41)
    a = km_report(val_risk, time, event, risk)
    b = km_report(val_risk, time, event, risk * 10 + 5)  # any change of the test risks
    assert a.cutoff == b.cutoff == pytest.approx(0.0)
    q = km_report(val_risk, time, event, risk, quantile=0.25)
    assert q.cutoff == pytest.approx(-0.5)


def test_one_empty_group_gives_nan_not_a_number():
    time, event, risk = _test_split()
    rep = km_report(np.array([100.0, 101.0]), time, event, risk)  # every test bag below the cut-off
    assert rep.n_high == 0 and math.isnan(rep.p_value)
    assert rep.png.startswith(b"\x89PNG")


def test_refusals():
    time, event, risk = _test_split()
    with pytest.raises(DataError, match="validation"):
        km_report(np.array([]), time, event, risk)
    with pytest.raises(DataError, match="one per test bag"):
        km_report(np.array([0.0]), time[:3], event, risk)


def _write(path, time, event, risk):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["bag_id,time,event,risk,S_bin0"]
    lines += [f"b{i},{t:.6g},{int(e)},{r:.6g},0.5" for i, (t, e, r) in enumerate(zip(time, event, risk))]
    path.write_text("\n".join(lines) + "\n")


def test_cli_reads_the_fold_and_writes_the_png(tmp_path):
    time, event, risk = _test_split()
    vt, ve, vr = _test_split(seed=3, n=60)
    folder = tmp_path / "run" / "fold-01" / "best"
    _write(folder / "predictions-val.csv", vt, ve, vr)
    _write(folder / "predictions-test.csv", time, event, risk)
    res = CliRunner().invoke(survival_group, ["km", str(tmp_path / "run"), "--fold", "1"])
    assert res.exit_code == 0, res.output
    assert "cut-off chosen on: validation" in res.output and "p_value = " in res.output
    assert (folder / "km-test.png").read_bytes().startswith(b"\x89PNG")
    rep, _, _ = km_report_for_run(tmp_path / "run", 1)
    assert rep.cutoff == pytest.approx(float(np.median(np.array([float(f"{v:.6g}") for v in vr]))))


def test_missing_files_are_explained(tmp_path):
    with pytest.raises(RunDirError, match="has no fold 0"):
        km_report_for_run(tmp_path, 0)
    (tmp_path / "fold-00" / "best").mkdir(parents=True)
    with pytest.raises(RunDirError, match="validation predictions"):
        km_report_for_run(tmp_path, 0)
    _write(tmp_path / "fold-00" / "best" / "predictions-val.csv", [1.0], [1], [0.1])
    (tmp_path / "fold-00" / "best" / "predictions-test.csv").write_text("bag_id,label,p_0,p_1\nx,1,0.2,0.8\n")
    with pytest.raises(RunDirError, match="not a survival predictions file"):
        km_report_for_run(tmp_path, 0)
