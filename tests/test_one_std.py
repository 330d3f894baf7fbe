"""One standard deviation everywhere: the sample SD over folds (n - 1), in summary.json, the printed summary and
the model card (the report's is checked in tests/test_report.py)."""

from __future__ import annotations

import math
import statistics

import pytest

from milzoo.cli._app import format_summary
from milzoo.metrics import STD_DDOF, mean_std, std_words


def test_mean_std_is_the_sample_standard_deviation():
    values = [0.7, 0.9, 0.85, None, math.nan]  # None and NaN (an undefined AUC) are left out
    mean, std = mean_std(values)
    assert mean == pytest.approx(statistics.mean([0.7, 0.9, 0.85]), abs=1e-15)
    assert std == pytest.approx(statistics.stdev([0.7, 0.9, 0.85]), abs=1e-15)
    assert STD_DDOF == 1 and std_words() == "sample standard deviation (n − 1)"
    one = mean_std([0.8])
    assert one[0] == 0.8 and math.isnan(one[1])  # one fold has no spread, not a spread of 0
    assert all(math.isnan(v) for v in mean_std([]))


def _summary(values, **extra):
    mean, std = mean_std(values)
    return {"name": "x", "protocol": "cv" if len(values) > 1 else "holdout", "num_folds": len(values),
            "last": {"test": {"acc": {"mean": mean, "std": None if math.isnan(std) else std, "values": values}}},
            **extra}


def test_the_printed_summary_says_which_standard_deviation():
    text = format_summary(_summary([0.7, 0.9, 0.8], std_ddof=1))
    assert text.splitlines()[0] == "x (cv, 3 fold(s)); mean±SD over folds, sample standard deviation (n − 1)"
    assert "acc 0.800±0.100" in text  # statistics.stdev([0.7, 0.9, 0.8]) = 0.1 (the population SD: 0.082)
    # a summary.json written before std_ddof existed holds the population SD, and says so
    assert "population standard deviation (n)" in format_summary(_summary([0.7, 0.9, 0.8]))
    single = format_summary(_summary([0.8], std_ddof=1))
    assert single.splitlines()[0] == "x (holdout, 1 fold(s))" and "acc 0.800" in single and "±" not in single
