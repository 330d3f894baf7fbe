"""Data that would yield confident wrong numbers is refused when it is loaded (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

from milzoo.builtin.classic import read_classic_csv
from milzoo.datasets.checks import class_indices, first_nonfinite_row
from milzoo.errors import DataError


def _write(path, labels, feats=None, bag_of=None):
    """One instance per row; ``bag_of[i]`` its bag id (default: two rows per bag)."""
    n = len(labels)
    bag_of = bag_of if bag_of is not None else [i // 2 + 1 for i in range(n)]
    feats = feats if feats is not None else np.arange(n * 2, dtype=float).reshape(n, 2) / 10
    lines = [",".join([repr(float(y)), str(b), *[repr(float(v)) for v in f]]) for y, b, f in zip(labels, bag_of, feats)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("labels,classes,k", [
    ([0, 0, 1, 1], [0, 1], 2),
    ([-1, -1, 1, 1], [0, 1], 2),
    ([0, 0, 1, 1, 2, 2], [0, 1, 2], 3),
])
def test_accepted_label_conventions(tmp_path, labels, classes, k):
    ds = read_classic_csv(_write(tmp_path / "ok.csv", labels))
    assert sorted(set(ds.labels.tolist())) == classes and ds.num_classes == k


@pytest.mark.parametrize("labels,match", [
    ([0, 0, 0, 0], r"single class \(every label is 0\)"),
    ([0, 0, 0.5, 0.5], r"non-integer labels \{0.5\}"),
    ([0, 0, -1, -1], r"labels \{-1, 0\}.*use 0 for the negative class"),
    ([1, 1, 2, 2], r"labels \{1, 2\}.*subtract 1"),
    ([0, 0, 5, 5], r"labels \{0, 5\}.*renumber the classes 0..k-1"),
])
def test_refused_labels_name_what_was_found_and_the_fix(tmp_path, labels, match):
    with pytest.raises(DataError, match=match):
        read_classic_csv(_write(tmp_path / "bad.csv", labels))


def test_bag_labels_of_a_single_class_are_refused(tmp_path):
    # rows carry 0 and 1, but every bag holds a 1-row: all bags positive
    path = _write(tmp_path / "b.csv", [0, 1, 0, 1], bag_of=[1, 1, 2, 2])
    with pytest.raises(DataError, match="no bag has the label"):
        read_classic_csv(path)


@pytest.mark.parametrize("value,why", [(np.nan, "is nan"), (np.inf, "is inf"), (-np.inf, "is -inf"),
                                       (1e300, "is too large for float32")])
def test_nonfinite_features_name_the_file_and_row(tmp_path, value, why):
    feats = np.ones((4, 2))
    feats[2, 1] = value
    path = _write(tmp_path / "nan.csv", [0, 0, 1, 1], feats)
    with pytest.raises(DataError, match=rf"nan.csv: feature 2 of row 3 {why}"):
        read_classic_csv(path)


def test_empty_and_bad_id_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="no rows"):
        read_classic_csv(str(tmp_path / "empty.csv"))
    (tmp_path / "id.csv").write_text("0,nan,1,2\n1,2,1,2\n")
    with pytest.raises(DataError, match="bag id"):
        read_classic_csv(str(tmp_path / "id.csv"))


def test_class_indices_and_nonfinite_helpers():
    assert class_indices(np.array([2.0, 0.0, 1.0]), "x")[1] == 3
    assert first_nonfinite_row(np.array([[1.0, 2.0], [3.0, np.nan]])) == 1
    assert first_nonfinite_row(np.ones((3, 2))) is None
