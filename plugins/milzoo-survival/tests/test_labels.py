"""read_survival_labels: the censorship convention in both directions, and refusals."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from milzoo.errors import DataError

from milzoo_survival import read_survival_labels


def test_clam_mcat_censorship_one_means_censored():
    rows = {"case_id": ["a", "b", "c"], "survival_months": [10.5, 3.0, 0.0], "censorship": [1, 0, 1]}
    y = read_survival_labels(rows)
    assert y.dtype == np.float64 and y.shape == (3, 2)
    assert y.tolist() == [[10.5, 0.0], [3.0, 1.0], [0.0, 0.0]]  # censorship 1 -> event 0


def test_event_column_one_means_observed():
    rows = {"survival_months": [10.5, 3.0], "event": [1, 0]}
    assert read_survival_labels(rows).tolist() == [[10.5, 1.0], [3.0, 0.0]]


def test_both_columns_consistent_are_accepted():
    rows = {"survival_months": [1.0, 2.0, 3.0], "censorship": [0, 1, 0], "event": [1, 0, 1]}
    assert read_survival_labels(rows)[:, 1].tolist() == [1.0, 0.0, 1.0]


def test_both_columns_inconsistent_are_refused():
    # an `event` column that follows the censorship convention (1 = censored): ambiguous
    rows = {"survival_months": [1.0, 2.0, 3.0], "censorship": [0, 1, 0], "event": [0, 1, 0]}
    with pytest.raises(DataError, match="ambiguous") as err:
        read_survival_labels(rows)
    msg = str(err.value)
    assert "\n" not in msg and "row 1" in msg and "censorship_column=None" in msg
    # ignoring one of the columns says which convention holds
    assert read_survival_labels(rows, event_column=None)[:, 1].tolist() == [1.0, 0.0, 1.0]
    assert read_survival_labels(rows, censorship_column=None)[:, 1].tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("column", ["censorship", "event"])
def test_indicator_values_outside_0_1_are_refused(column):
    with pytest.raises(DataError, match=rf"'{column}' must hold 0 or 1.*row 2: 2"):
        read_survival_labels({"survival_months": [1.0, 2.0], column: [0, 2]})
    with pytest.raises(DataError, match="must hold 0 or 1"):
        read_survival_labels({"survival_months": [1.0, 2.0], column: [0, None]})


def test_missing_columns_and_bad_times():
    with pytest.raises(DataError, match="no time column 'survival_months'"):
        read_survival_labels({"months": [1.0], "censorship": [0]})
    with pytest.raises(DataError, match="neither of the censoring columns"):
        read_survival_labels({"survival_months": [1.0]})
    with pytest.raises(DataError, match="negative"):
        read_survival_labels({"survival_months": [1.0, -3.0], "censorship": [0, 0]})
    with pytest.raises(DataError, match="not a number"):
        read_survival_labels({"survival_months": [1.0, "soon"], "censorship": [0, 0]})


def test_csv_rows_dataframes_and_other_column_names():
    text = "slide_id,survival_months,censorship\ns1,12.0,0\ns2,7.5,1\n"
    y = read_survival_labels(csv.DictReader(io.StringIO(text)))
    assert y.tolist() == [[12.0, 1.0], [7.5, 0.0]]
    import pandas as pd

    df = pd.DataFrame({"OS.time": [100, 200], "OS": [True, False]})
    y = read_survival_labels(df, time_column="OS.time", event_column="OS", censorship_column=None)
    assert y.tolist() == [[100.0, 1.0], [200.0, 0.0]]
