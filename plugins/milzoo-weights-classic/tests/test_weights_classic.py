"""Every model milzoo-weights-classic ships loads by name offline and reproduces its card's metrics."""

import pytest

from milzoo.testing.weights import check_weight_entry, entry_names

NAMES = entry_names("milzoo_weights_classic")


def test_the_promised_entries_ship():
    expected = {f"{m}-{d}" for m in ("abmil", "dsmil", "psatt", "demil") for d in ("musk1", "musk2", "elephant")}
    assert set(NAMES) == expected


@pytest.mark.parametrize("name", NAMES)
def test_entry_loads_offline_and_reproduces_its_card(name, monkeypatch):
    check_weight_entry(name, monkeypatch)
