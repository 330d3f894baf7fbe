"""Registry integrity: no distribution can hide or take over another one's component silently.

Fake distributions (``*.dist-info`` with ``METADATA`` and ``entry_points.txt``,
plus a module) are put on ``sys.path``; nothing is pip-installed.
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from milzoo import checkpoint as ckpt
from milzoo import registry as plugins
from milzoo import registry
from milzoo.model.build import build_components
from milzoo.cli import cli
from milzoo.errors import AmbiguousComponentError, CheckpointError, UnknownComponentError

_MEAN_NAMED = """
    from milzoo import hookimpl


    @hookimpl
    def milzoo_register_poolings(register):
        from milzoo.builtin.poolings import MeanPooling

        class Pool(MeanPooling):
            '''{doc}'''

            name = "{name}"

        register(Pool)
"""

_BAD_DEFAULT = """
    from pydantic import Field

    from milzoo import hookimpl
    from milzoo.components.base import ComponentConfig


    @hookimpl
    def milzoo_register_poolings(register):
        from milzoo.builtin.poolings import MeanPooling

        class BadDefault(MeanPooling):
            '''Its default breaks its own bound.'''

            name = "bad_default"

            class Config(ComponentConfig):
                k: int = Field(default=-1, ge=0)

        register(BadDefault)
"""


def _pool_plugin(name: str, doc: str) -> str:
    return _MEAN_NAMED.replace("{name}", name).replace("{doc}", doc)


#: key -> (entry-point name, distribution, module, source)
FAKES = {
    "impostor": ("aaa_impostor", "aaa-impostor", "aaa_impostor_mod", _pool_plugin("abmil", "An impostor.")),
    "shadow": ("abmil", "milzoo-shadow", "milzoo_shadow_mod", _pool_plugin("shadow_pool", "Shadow.")),
    "gone": ("fake_gone", "milzoo-fake-gone", "milzoo_fake_gone_mod", _pool_plugin("gone_pool", "Soon gone.")),
    "bad_default": ("bad_default", "milzoo-fake-baddefault", "milzoo_fake_baddefault_mod", _BAD_DEFAULT),
    "long": ("long_one", "milzoo-a-very-long-distribution-name", "milzoo_long_mod",
             _pool_plugin("long_pool", "From a distribution with a long name.")),
}


def _write(root: Path, ep: str, dist: str, module: str, source: str) -> None:
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[milzoo]\n{ep} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install("impostor", ...)`` puts those fake distributions on sys.path and rebuilds the registry."""
    for var in ("MILZOO_LOAD_PLUGINS", "MILZOO_DISABLE_PLUGINS", "MILZOO_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    roots: list[str] = []

    def _install(*keys: str) -> Path:
        root = tmp_path / f"site-{len(roots)}"
        for key in keys:
            _write(root, *FAKES[key])
        sys.path.insert(0, str(root))
        roots.append(str(root))
        importlib.invalidate_caches()
        plugins.reset_plugins()
        return root

    def _uninstall(root: Path) -> None:
        sys.path.remove(str(root))
        for _, _, module, _ in FAKES.values():
            sys.modules.pop(module, None)
        importlib.invalidate_caches()
        plugins.reset_plugins()

    _install.uninstall = _uninstall
    yield _install
    for root in roots:
        if root in sys.path:
            sys.path.remove(root)
    for _, _, module, _ in FAKES.values():
        sys.modules.pop(module, None)
    importlib.invalidate_caches()
    plugins.reset_plugins()


def _abmil_class():
    from milzoo_abmil.pooling import ABMILPooling

    return ABMILPooling


def _recipe_file(path: Path, csv: Path, pooling: str = "abmil", **extra) -> Path:
    recipe = {
        "name": "conflict", "data": {"name": "classic", "path": str(csv)},
        "encoder": {"name": "mlp", "dims": [8]}, "pooling": {"name": pooling, **extra},
        "train": {"epochs": 1, "batch_size": 4, "progress": False, "threads": 1},
        "protocol": {"kind": "cv", "folds": 2},
    }
    path.write_text(tomli_w.dumps(recipe))
    return path


def _abmil_checkpoint(directory: Path) -> Path:
    model = build_components({"name": "mlp", "dims": [4]}, {"name": "abmil", "attn_hidden": 3}, (5,), 2)
    return ckpt.save_model(model, directory)


# --------------------------------------------------------------------------- shadowing by entry-point name


def test_same_entry_point_name_in_two_distributions_loads_both(install, tmp_path):
    saved = _abmil_checkpoint(tmp_path / "m")  # before the second distribution arrives
    install("shadow")
    recs = [r for r in plugins.plugin_records() if r.name == "abmil"]
    assert sorted((r.distribution, r.status) for r in recs) == [("milzoo-abmil", "ok"), ("milzoo-shadow", "ok")]
    assert registry.get_component("pooling", "abmil") is _abmil_class()
    assert registry.get_component("pooling", "shadow_pool").provenance["distribution"] == "milzoo-shadow"
    res = CliRunner().invoke(cli, ["plugins", "--json"])
    assert res.exit_code == 0
    assert {(r["name"], r["distribution"]) for r in json.loads(res.output)} >= {
        ("abmil", "milzoo-abmil"), ("abmil", "milzoo-shadow")}
    assert isinstance(ckpt.load_model(saved).pooling, _abmil_class())


# --------------------------------------------------------------------------- takeover of a component name


def test_contested_name_is_an_error_at_the_point_of_use(install, tmp_path, classic_csv):
    install("impostor")
    with pytest.raises(AmbiguousComponentError) as info:
        registry.get_component("pooling", "abmil")
    msg = str(info.value)
    assert "milzoo-abmil 0.1.0" in msg and "aaa-impostor 0.1" in msg
    assert '"milzoo-abmil:abmil"' in msg and '"aaa-impostor:abmil"' in msg

    recipe = _recipe_file(tmp_path / "r.toml", classic_csv)
    for args in (["validate", str(recipe)], ["run", str(recipe), "--out", str(tmp_path / "run")]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2, res.output
        assert "milzoo-abmil" in res.output and "aaa-impostor" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_qualified_name_always_works(install, tmp_path, classic_csv):
    install("impostor")
    assert registry.get_component("pooling", "milzoo-abmil:abmil") is _abmil_class()
    assert registry.get_component("pooling", "milzoo_ABMIL:abmil") is _abmil_class()  # PEP 503 normalised
    assert registry.get_component("pooling", "aaa-impostor:abmil").__doc__ == "An impostor."
    model = build_components({"name": "identity"}, {"name": "milzoo-abmil:abmil", "attn_hidden": 3}, (4,), 2)
    assert isinstance(model.pooling, _abmil_class())
    with pytest.raises(UnknownComponentError, match="milzoo-abmil:abmil"):  # lists the real providers
        registry.get_component("pooling", "milzoo-dsmil:abmil")

    recipe = _recipe_file(tmp_path / "r.toml", classic_csv, pooling="milzoo-abmil:abmil", attn_hidden=4)
    res = CliRunner().invoke(cli, ["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "run" / "fold-00" / "last" / "config.json").read_text())
    assert cfg["pooling"]["name"] == "abmil" and cfg["components"]["pooling"]["distribution"] == "milzoo-abmil"
    # the bare name would be refused; the override in the provider's name works too
    res = CliRunner().invoke(cli, ["validate", str(_recipe_file(tmp_path / "b.toml", classic_csv)),
                                   "--set", 'pooling.name="milzoo-abmil:abmil"'])
    assert res.exit_code == 0, res.output


def test_plugins_and_list_show_the_conflict(install):
    install("impostor")
    res = CliRunner().invoke(cli, ["plugins"])
    assert res.exit_code == 0, res.output
    assert "conflicts" in res.output and "pooling 'abmil' is registered by" in res.output
    assert '"milzoo-abmil:abmil"' in res.output and '"aaa-impostor:abmil"' in res.output
    line = next(l for l in res.output.splitlines() if l.startswith("aaa_impostor"))
    assert "ok (conflict)" in line
    res = CliRunner().invoke(cli, ["list", "pooling"])
    rows = [l for l in res.output.splitlines() if l.split()[1:2] == ["abmil"]]
    assert len(rows) == 2 and all("[conflict: use" in r for r in rows)
    items = json.loads(CliRunner().invoke(cli, ["list", "pooling", "--json"]).output)
    contested = {i["distribution"]: i["conflicts"] for i in items if i["name"] == "abmil"}
    assert contested == {"aaa-impostor": ["milzoo-abmil"], "milzoo-abmil": ["aaa-impostor"]}
    recs = {(r["name"], r["distribution"]): r for r in json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)}
    assert recs[("aaa_impostor", "aaa-impostor")]["conflicts"] == ["pooling:abmil"]


# --------------------------------------------------------------------------- provenance when loading


def test_checkpoint_loads_with_its_recorded_provider(install, tmp_path, monkeypatch):
    saved = _abmil_checkpoint(tmp_path / "m")
    install("impostor")
    model = ckpt.load_model(saved)  # the contested name resolves through config.json's record
    assert type(model.pooling) is _abmil_class()

    monkeypatch.setenv("MILZOO_DISABLE_PLUGINS", "milzoo-abmil")
    plugins.reset_plugins()
    with pytest.raises(CheckpointError) as info:
        ckpt.load_model(saved)
    msg = str(info.value)
    assert "provided by milzoo-abmil" in msg and "aaa-impostor 0.1" in msg and "not loaded" in msg
    assert "disabled" in msg
    from milzoo.cli import add_all_commands

    add_all_commands()
    res = CliRunner().invoke(cli, ["export", str(saved), str(tmp_path / "out")])
    assert res.exit_code == 2 and "aaa-impostor" in res.output


def test_uninstalled_distribution_is_named(install, tmp_path, classic_csv):
    root = install("gone")
    recipe = _recipe_file(tmp_path / "r.toml", classic_csv, pooling="gone_pool")
    run_dir = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", str(recipe), "--out", str(run_dir), "--no-progress"])
    assert res.exit_code == 0, res.output
    info = json.loads((run_dir / "run.json").read_text())
    gone = next(p for p in info["plugins"] if p["distribution"] == "milzoo-fake-gone")
    assert gone["components"] == ["pooling:gone_pool"]

    install.uninstall(root)
    hint = "pip install milzoo-fake-gone==0.1"
    for args in (["validate", str(run_dir / "recipe.toml")],
                 ["run", str(run_dir / "recipe.toml"), "--out", str(run_dir), "--resume"],
                 ["run", str(recipe), "--out", str(run_dir), "--resume"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2, res.output
        assert hint in res.output and "not installed" in res.output, res.output
    with pytest.raises(CheckpointError, match=hint):
        ckpt.load_model(run_dir / "fold-00" / "last")


# --------------------------------------------------------------------------- a plugin broken by its own defaults


def test_config_default_breaking_its_bound_blames_the_plugin(install):
    install("bad_default")
    registry.list_components()
    rec = next(r for r in plugins.plugin_records() if r.name == "bad_default")
    assert rec.status == "failed" and rec.distribution == "milzoo-fake-baddefault"
    assert "'bad_default'" in rec.error and "k = -1" in rec.error and "plugin is broken" in rec.error
    with pytest.raises(UnknownComponentError, match="k = -1"):
        registry.get_component("pooling", "bad_default")
    assert registry.get_component("pooling", "abmil") is _abmil_class()  # the rest keeps working


# --------------------------------------------------------------------------- column layout


def _column_starts(line: str) -> list[int]:
    starts, prev = [], " "
    for i, ch in enumerate(line):
        if ch != " " and prev == " " and (i == 0 or line[i - 2:i] == "  "):
            starts.append(i)
        prev = ch
    return starts


def test_columns_align_for_long_distribution_names(install):
    install("long")
    out = CliRunner().invoke(cli, ["plugins"]).output.splitlines()
    table = [l for l in out if l.strip() and not l.startswith(("conflicts", "  "))]
    version_at = {l.index(" 0.1") for l in table if " 0.1" in l}
    assert len(version_at) == 1, "\n".join(table)
    out = CliRunner().invoke(cli, ["list", "pooling"]).output.splitlines()
    assert len({_column_starts(l)[3] for l in out if l.strip()}) == 1, "\n".join(out)
