"""Every model milzoo-weights-fmnist ships loads by name offline and reproduces its card's metrics on the
Fashion-MNIST test images (the Debian package dataset-fashion-mnist; docs/vision.md)."""

from pathlib import Path

import pytest

from milzoo.testing.weights import check_weight_entry, entry_names

NAMES = entry_names("milzoo_weights_fmnist")
DATA = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def test_the_promised_entries_ship():
    assert set(NAMES) == {"psmil-fmnist", "abmil-fmnist"}


@pytest.mark.parametrize("name", NAMES)
def test_entry_loads_offline_and_reproduces_its_card(name, monkeypatch):
    if not DATA.exists():
        pytest.skip("the Fashion-MNIST files are not installed (apt-get install dataset-fashion-mnist)")
    check_weight_entry(name, monkeypatch)
