"""milzoo.testing.registered_plugins: a plugin registered for a block, as if installed, and gone afterwards."""

from __future__ import annotations

import pytest

from milzoo import hookimpl, registry
from milzoo.builtin.poolings import MeanPooling
from milzoo.errors import UnknownComponentError
from milzoo.testing import registered_plugins


class _Twin(MeanPooling):
    name = "regtest_twin"


class _Plugin:
    @hookimpl
    def milzoo_register_poolings(self, register):
        register(_Twin)


class _Broken:
    @hookimpl
    def milzoo_register_poolings(self, register):
        raise RuntimeError("boom")


def test_registered_for_the_block_only():
    with registered_plugins({"regtest": _Plugin()}):
        assert registry.get_component("pooling", "regtest_twin") is _Twin
    with pytest.raises(UnknownComponentError):
        registry.get_component("pooling", "regtest_twin")
    assert not registry.get_plugin_manager().has_plugin("regtest")


def test_a_failure_recorded_against_it_is_forgotten_afterwards():
    with registered_plugins({"regtest-broken": _Broken()}):
        registry.list_components("pooling")
        assert any(r.key == "regtest-broken" for r in registry.failed_plugins())
    assert not any(r.key == "regtest-broken" for r in registry.plugin_records())
    assert registry.get_component("pooling", "mean") is MeanPooling


def test_unregistered_even_when_the_block_raises():
    with pytest.raises(KeyError), registered_plugins({"regtest": _Plugin()}):
        raise KeyError("x")
    assert not registry.get_plugin_manager().has_plugin("regtest")
