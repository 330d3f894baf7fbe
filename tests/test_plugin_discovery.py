"""Plugin discovery through entry points, and isolation of broken plugins.

The first tests use the installed ``milzoo-example-pooling`` distribution (the
template plugin in ``plugins/``).  The others put fake distributions
(``*.dist-info`` folders with ``METADATA`` and ``entry_points.txt``, plus their
modules) on ``sys.path``: one good, one that fails to import, one whose hook
raises, one that registers something that is not a component, one with a
misspelt hook, and (in their own tests) one that registers a name the built-ins use and one
that registers a name twice.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from milzoo import registry as plugins
from milzoo import registry
from milzoo.errors import RecipeError, UnknownComponentError

EXAMPLE_DIST = "milzoo-example-pooling"
EXAMPLE_EP = "example_pooling"


def _example_version() -> str:
    try:
        return md.version(EXAMPLE_DIST)
    except md.PackageNotFoundError:
        pytest.fail(
            f"{EXAMPLE_DIST} is not installed; install it with "
            "`pip install --no-build-isolation --no-deps -e plugins/milzoo-example-pooling`"
        )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILZOO_")}
    env["PYTHONPATH"] = ""
    return env


@pytest.fixture
def fresh_registry(monkeypatch):
    """No plugin env vars; the plugin manager and registry rebuilt before and after the test."""
    for var in ("MILZOO_LOAD_PLUGINS", "MILZOO_DISABLE_PLUGINS", "MILZOO_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


def _record(name: str) -> plugins.PluginRecord:
    found = [r for r in plugins.plugin_records() if r.name == name]
    assert len(found) == 1, f"plugin {name!r} not in {[r.name for r in plugins.plugin_records()]}"
    return found[0]


# --------------------------------------------------------------------------- the installed example plugin


def test_installed_example_plugin_is_listed_by_the_cli():
    version = _example_version()
    # a fresh process: discovery through the installed distribution's entry point, nothing else
    proc = subprocess.run(
        [sys.executable, "-m", "milzoo", "plugins", "--json"],
        capture_output=True, text=True, env=_clean_env(), cwd=Path(__file__).parent, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    recs = {r["name"]: r for r in json.loads(proc.stdout)}
    assert recs[EXAMPLE_EP]["distribution"] == EXAMPLE_DIST
    assert recs[EXAMPLE_EP]["version"] == version
    assert recs[EXAMPLE_EP]["status"] == "ok" and recs[EXAMPLE_EP]["error"] == ""
    assert recs[EXAMPLE_EP]["module"] == "milzoo_example_pooling.plugin"


def test_installed_example_plugin_in_list_pooling(fresh_registry):
    from milzoo.cli import cli

    version = _example_version()
    res = CliRunner().invoke(cli, ["list", "pooling"])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if l.split()[1:2] == ["lse"])
    assert line.split()[0] == "pooling" and EXAMPLE_DIST in line
    res = CliRunner().invoke(cli, ["list", "pooling", "--json"])
    entry = next(e for e in json.loads(res.output) if e["name"] == "lse")
    assert (entry["plugin"], entry["distribution"], entry["version"]) == (EXAMPLE_EP, EXAMPLE_DIST, version)
    cls = registry.get_component("pooling", "lse")
    assert cls.provenance == {"plugin": EXAMPLE_EP, "distribution": EXAMPLE_DIST, "version": version}


def _write_classic_csv(path: Path, n_bags: int = 16, n_feat: int = 3) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for b in range(n_bags):
        y = b % 2
        x = rng.normal(size=(int(rng.integers(2, 5)), n_feat))
        x[0, 0] += 3.0 * y
        rows += [[y, b + 1, *inst] for inst in x]
    np.savetxt(path, np.array(rows), delimiter=",", fmt="%.6g")
    return path


def test_installed_example_plugin_runs_from_a_recipe(tmp_path, fresh_registry):
    from milzoo.runs.runner import run

    version = _example_version()
    recipe = {
        "name": "lse-discovery",
        "data": {"name": "classic", "path": str(_write_classic_csv(tmp_path / "toy.csv"))},
        "pooling": {"name": "lse", "normalize": "sum"},
        "train": {"epochs": 1, "batch_size": 4, "progress": False, "threads": 1},
        "protocol": {"kind": "cv", "folds": 2},
    }
    summary = run(recipe, out=tmp_path / "run")
    assert summary["num_folds"] == 2
    cfg = json.loads((tmp_path / "run" / "fold-01" / "last" / "config.json").read_text())
    assert cfg["components"]["pooling"] == {"name": "lse", "plugin": EXAMPLE_EP, "distribution": EXAMPLE_DIST,
                                            "version": version}
    assert cfg["distributions"][EXAMPLE_DIST] == version


# --------------------------------------------------------------------------- fake distributions

_GOOD = """
    from milzoo import hookimpl


    @hookimpl
    def milzoo_register_poolings(register):
        from milzoo.builtin.poolings import MeanPooling

        class FakeMean(MeanPooling):
            '''A pooling from a fake plugin.'''

            name = "fake_mean"

        register(FakeMean)
"""

_BROKEN = """
    raise RuntimeError("fake plugin is broken on purpose")
"""

_HOOK_RAISES = """
    from milzoo import hookimpl


    @hookimpl
    def milzoo_register_losses(register):
        raise ValueError("the hook exploded")
"""

_DUPLICATE = """
    from milzoo import hookimpl


    @hookimpl
    def milzoo_register_poolings(register):
        from milzoo.builtin.poolings import MaxPooling, MeanPooling

        class OtherMean(MeanPooling):
            '''Claims a name that the built-ins already use.'''

            name = "mean"

        class DupOk(MaxPooling):
            '''A second pooling of the same plugin, with a free name.'''

            name = "fake_dup_ok"

        register(OtherMean)
        register(DupOk)
"""

_NOT_A_COMPONENT = """
    from milzoo import hookimpl


    @hookimpl
    def milzoo_register_poolings(register):
        class NotAPooling:
            name = "fake_not_a_pooling"

        register(NotAPooling)
"""

_MISSPELT_HOOK = """
    from milzoo import hookimpl


    @hookimpl
    def milzoo_register_pooling(register):  # missing "s": no such hook
        pass
"""

# entry-point name -> (distribution, module name, source)
FAKES = {
    "fake_good": ("milzoo-fake-good", "milzoo_fake_good", _GOOD),
    "fake_broken": ("milzoo-fake-broken", "milzoo_fake_broken", _BROKEN),
    "fake_hook": ("milzoo-fake-hook", "milzoo_fake_hook", _HOOK_RAISES),
    "fake_noncomp": ("milzoo-fake-noncomp", "milzoo_fake_noncomp", _NOT_A_COMPONENT),
    "fake_typo": ("milzoo-fake-typo", "milzoo_fake_typo", _MISSPELT_HOOK),
}
DUPLICATE = ("fake_dup", "milzoo-fake-dup", "milzoo_fake_dup", _DUPLICATE)  # added by its own test
FAKE_VERSION = "0.1"


def _write_fake_dist(root: Path, ep_name: str, dist: str, module: str, source: str) -> None:
    info = root / f"{dist.replace('-', '_')}-{FAKE_VERSION}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {FAKE_VERSION}\n")
    (info / "entry_points.txt").write_text(f"[milzoo]\n{ep_name} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch, fresh_registry):
    """Fake distributions on sys.path; the registry is rebuilt from them on first use."""
    root = tmp_path / "site"
    for ep_name, (dist, module, source) in FAKES.items():
        _write_fake_dist(root, ep_name, dist, module, source)
    monkeypatch.syspath_prepend(str(root))
    plugins.reset_plugins()
    yield root
    plugins.reset_plugins()
    for module in [m for _, m, _ in FAKES.values()] + [DUPLICATE[2]]:
        sys.modules.pop(module, None)


def test_fake_distributions_are_discovered_and_failures_isolated(fake_plugins):
    registry.list_components()  # runs every hook, as `milzoo plugins` does

    good = _record("fake_good")
    assert (good.distribution, good.version, good.status, good.error) == ("milzoo-fake-good", "0.1", "ok", "")
    fake_mean = registry.get_component("pooling", "fake_mean")
    assert fake_mean.provenance == {"plugin": "fake_good", "distribution": "milzoo-fake-good", "version": "0.1"}

    broken = _record("fake_broken")
    assert (broken.distribution, broken.version, broken.status) == ("milzoo-fake-broken", "0.1", "failed")
    assert broken.error == "RuntimeError: fake plugin is broken on purpose"

    hook = _record("fake_hook")
    assert (hook.distribution, hook.status) == ("milzoo-fake-hook", "failed")
    assert hook.error == "ValueError: the hook exploded"

    noncomp = _record("fake_noncomp")
    assert noncomp.status == "failed" and "must be a subclass of milzoo.components.Pooling" in noncomp.error
    assert "fake_not_a_pooling" not in registry.names("pooling")

    typo = _record("fake_typo")
    assert typo.status == "failed" and "milzoo_register_pooling" in typo.error

    # everything else still works: built-ins and the installed plugins
    assert {"mean", "max"} <= set(registry.names("pooling"))
    assert _record("milzoo.builtin").status == "ok"
    installed = [r for r in plugins.plugin_records() if r.name in {EXAMPLE_EP, "abmil"}]
    assert installed and all(r.status == "ok" for r in installed)
    assert {r.name for r in plugins.failed_plugins()} == {"fake_broken", "fake_hook", "fake_noncomp", "fake_typo"}


def test_a_name_taken_by_the_builtins_is_contested_not_decided(fake_plugins):
    from milzoo.builtin.poolings import MeanPooling
    from milzoo.errors import AmbiguousComponentError

    ep_name, dist, module, source = DUPLICATE
    _write_fake_dist(fake_plugins, ep_name, dist, module, source)
    importlib.invalidate_caches()
    plugins.reset_plugins()
    registry.list_components()
    assert registry.get_component("pooling", "fake_dup_ok").provenance["distribution"] == dist
    # neither registration wins by order: the bare name is an error that names both providers
    with pytest.raises(AmbiguousComponentError) as info:
        registry.get_component("pooling", "mean")
    msg = str(info.value)
    assert "milzoo 0" in msg and f"{dist} 0.1" in msg and '"milzoo:mean"' in msg and f'"{dist}:mean"' in msg
    # the qualified names always work
    assert registry.get_component("pooling", "milzoo:mean") is MeanPooling
    other = registry.get_component("pooling", f"{dist}:mean")
    assert other is not MeanPooling and other.provenance["distribution"] == dist
    dup = _record(ep_name)
    assert (dup.status, dup.conflicts) == ("ok", ["pooling:mean"])
    assert _record("milzoo.builtin").conflicts == ["pooling:mean"]


_SAME_DIST_TWICE = """
    from milzoo import hookimpl


    @hookimpl
    def milzoo_register_poolings(register):
        from milzoo.builtin.poolings import MaxPooling, MeanPooling

        class A(MeanPooling):
            '''First.'''

            name = "fake_twice"

        class B(MaxPooling):
            '''Second, same name, same plugin.'''

            name = "fake_twice"

        register(A)
        register(B)
"""


def test_one_distribution_registering_a_name_twice_is_its_own_failure(fake_plugins):
    _write_fake_dist(fake_plugins, "fake_twice", "milzoo-fake-twice", "milzoo_fake_twice", _SAME_DIST_TWICE)
    importlib.invalidate_caches()
    plugins.reset_plugins()
    try:
        registry.list_components()
        rec = _record("fake_twice")
        assert rec.status == "failed" and "'fake_twice' is already registered by fake_twice" in rec.error
        assert registry.get_component("pooling", "fake_twice").__doc__ == "First."
        assert not registry.conflicts()
    finally:
        sys.modules.pop("milzoo_fake_twice", None)


def test_missing_component_names_the_failed_plugins(fake_plugins):
    from milzoo.recipe import validate_recipe

    with pytest.raises(UnknownComponentError) as info:
        registry.get_component("pooling", "fake_missing")
    msg = str(info.value)
    assert "fake_broken (milzoo-fake-broken 0.1): RuntimeError: fake plugin is broken on purpose" in msg
    assert "milzoo plugins" in msg

    with pytest.raises(RecipeError) as info:
        validate_recipe({"data": {"name": "classic", "path": "x.csv"}, "pooling": {"name": "fake_mean_"}})
    msg = str(info.value)
    assert "pooling.name" in msg and "'fake_mean'" in msg  # did you mean
    assert "fake plugin is broken on purpose" in msg and "the hook exploded" in msg


def test_cli_reports_failed_plugins_without_failing(fake_plugins):
    from milzoo.cli import cli

    res = CliRunner().invoke(cli, ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    recs = {r["name"]: r for r in json.loads(res.output)}
    assert recs["fake_broken"]["status"] == "failed"
    assert recs["fake_broken"]["error"] == "RuntimeError: fake plugin is broken on purpose"
    assert recs["fake_good"]["status"] == "ok"
    res = CliRunner().invoke(cli, ["list", "pooling"])
    assert res.exit_code == 0 and "fake_mean" in res.output


def test_load_plugins_empty_loads_only_builtins(fake_plugins, monkeypatch):
    monkeypatch.setenv("MILZOO_LOAD_PLUGINS", "")
    plugins.reset_plugins()
    assert registry.names("pooling") == ["max", "mean"]
    recs = plugins.plugin_records()
    assert [r.name for r in recs if r.status == "ok"] == ["milzoo.builtin"]
    assert {r.name for r in recs if r.status == "disabled"} >= set(FAKES) | {EXAMPLE_EP}
    assert not plugins.failed_plugins()


def test_load_plugins_names_a_subset(fake_plugins, monkeypatch):
    # an entry-point name and a distribution name
    monkeypatch.setenv("MILZOO_LOAD_PLUGINS", f"fake_good,{EXAMPLE_DIST}")
    plugins.reset_plugins()
    assert set(registry.names("pooling")) == {"max", "mean", "fake_mean", "lse"}
    assert {r.name for r in plugins.plugin_records() if r.status == "ok"} == {"milzoo.builtin", "fake_good",
                                                                             EXAMPLE_EP}


def test_disable_plugins(fake_plugins, monkeypatch):
    monkeypatch.setenv("MILZOO_DISABLE_PLUGINS", "fake_good, milzoo-fake-broken")
    plugins.reset_plugins()
    assert _record("fake_good").status == "disabled"
    assert _record("fake_broken").status == "disabled" and _record("fake_broken").error == ""
    assert "fake_mean" not in registry.names("pooling")
    assert "fake_not_a_pooling" not in registry.names("pooling")
    assert _record("fake_hook").status == "failed"  # the others still load (and fail) as before
    assert "fake_broken" not in {r.name for r in plugins.failed_plugins()}
