"""Shipped recipes by name (milzoo.recipebook, `milzoo recipes`): one source of truth per recipe, registered through
the plugin hook by the distribution that provides its components, with the registry's rule for contested names."""

from __future__ import annotations

import importlib
import json
import os
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import milzoo
from milzoo import registry as plugins
from milzoo.recipe import book as recipebook
from milzoo.cli import add_all_commands, cli
from milzoo.errors import RecipeError
from milzoo.recipe.book import AmbiguousRecipeError, UnknownRecipeError

add_all_commands()
ROOT = Path(__file__).resolve().parents[1]
CHECKOUT = {p.relative_to(ROOT / "recipes").as_posix()[:-len(".toml")]: p for p in (ROOT / "recipes").rglob("*.toml")}

#: who ships what (docs/recipes.md, "Where recipes live")
HOME = {"quickstart": "milzoo", "wsi/": "milzoo-wsi", "classic/clam_": "milzoo-clam", "classic/vitmil_": "milzoo-vitmil", "classic/ilra_": "milzoo-ilra", "classic/rrt_": "milzoo-rrt", "classic/wikg_": "milzoo-wikg", "survival/": "milzoo-survival", "regression/": "milzoo-survival", "psmil_": "milzoo-psmil", "psmil/": "milzoo-psmil",
        "classic/psatt_": "milzoo-psmil", **{f"classic/{m}_": f"milzoo-{m}"
                                             for m in ("abmil", "demil", "dsmil", "dtfd", "rgmil", "transmil")}}


def _home(name: str) -> str:
    matches = [dist for prefix, dist in HOME.items() if name.startswith(prefix)]
    assert len(matches) == 1, name
    return matches[0]


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


# --------------------------------------------------------------------------- one source of truth


def test_every_checkout_recipe_is_a_link_to_the_file_its_distribution_ships():
    shipped = {r.name: r for r in recipebook.list_recipes()}
    assert set(CHECKOUT) <= set(shipped), sorted(set(CHECKOUT) - set(shipped))
    # and every recipe this checkout ships has its checkout path (tests/test_recipe.py validates those)
    ours = {n for n, r in shipped.items() if r.path is not None and r.path.resolve().is_relative_to(ROOT)}
    assert ours == set(CHECKOUT), sorted(ours ^ set(CHECKOUT))
    for name, path in CHECKOUT.items():
        recipe = shipped[name]
        assert recipe.distribution == _home(name), name
        # a link, not a copy: an editor that replaced the link by a file would fork the recipe
        assert path.is_symlink(), f"{path} must be a relative symlink to {recipe.path}"
        assert not os.path.isabs(os.readlink(path)), path
        assert path.resolve() == recipe.path.resolve(), name


def test_each_package_declares_its_recipes_as_package_data():
    for pyproject in [ROOT / "pyproject.toml", *sorted((ROOT / "plugins").glob("*/pyproject.toml"))]:
        data = tomllib.loads(pyproject.read_text())
        src = pyproject.parent / "src" if (pyproject.parent / "src").is_dir() else pyproject.parent
        for pkg in [p for p in src.iterdir() if (p / "recipes").is_dir() and (p / "__init__.py").is_file()]:
            declared = data["tool"]["setuptools"]["package-data"][pkg.name]
            assert "recipes/**/*.toml" in declared, pyproject
            with open(pkg / "plugin.py" if pkg.name != "milzoo" else pkg / "builtin" / "__init__.py") as fh:
                assert "def milzoo_register_recipes" in fh.read(), pkg


def test_names_are_the_checkout_paths_and_psmil_pretrained_entries_name_shipped_recipes():
    assert recipebook.get_recipe("classic/abmil_musk1").read_text() == CHECKOUT["classic/abmil_musk1"].read_text()
    from milzoo.hub.pretrained import list_pretrained

    entries = [e for e in list_pretrained("psmil-*") if e.package is None]  # milzoo-psmil's paper entries
    assert len(entries) == 6
    for entry in entries:
        assert recipebook.get_recipe(entry.recipe).distribution == "milzoo-psmil"
        assert entry.train_command.startswith(f"milzoo run {entry.recipe} --out")
    from milzoo.hub.pretrained import PretrainedEntry

    old_style = PretrainedEntry(name="x", repo_id="o/x", recipe="recipes/classic/dsmil_musk1.toml")
    assert old_style.train_command == "milzoo run classic/dsmil_musk1 --out runs/x"
    assert PretrainedEntry(name="y", repo_id="o/y", recipe="recipes/mine.toml").train_command.startswith(
        "milzoo run recipes/mine.toml --out")


# --------------------------------------------------------------------------- loading by name


def test_load_recipe_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = milzoo.load_recipe("quickstart", ["train.epochs=2"])
    assert r.root.name == "quickstart" and r.root.train.epochs == 2
    assert Path(r.source).resolve() == (ROOT / "milzoo" / "recipes" / "quickstart.toml").resolve()
    assert milzoo.load_recipe("milzoo-abmil:classic/abmil_musk1").root.pooling.name == "abmil"
    # the checkout path of a shipped recipe works where there is no checkout (docs and messages use it)
    assert milzoo.load_recipe("recipes/psmil_cifar10.toml").root.name == "psmil_cifar10"
    # an existing file always wins over a name
    (tmp_path / "quickstart").write_text(CHECKOUT["classic/abmil_musk1"].read_text())
    assert milzoo.load_recipe("quickstart").root.name == "abmil_musk1"


def test_checkout_path_still_reads_the_checkout_file(monkeypatch):
    monkeypatch.chdir(ROOT)
    r = milzoo.load_recipe("recipes/psmil_cifar10.toml")
    assert r.source == "recipes/psmil_cifar10.toml" and r.root.name == "psmil_cifar10"


def test_unknown_names_are_one_paragraph_with_suggestions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, suggestion in ((["validate", "quikstart"], "'quickstart'"),
                             (["run", "abmil_musk1", "--out", "x"], "'classic/abmil_musk1'"),
                             (["recipes", "show", "classic/abmil_muskl"], "'classic/abmil_musk1'"),
                             (["validate", "recipes/quikstart.toml"], "'quickstart'")):
        res = run_cli(*args)
        assert res.exit_code == 2, res.output
        assert suggestion in res.output.split("Did you mean ")[1].split("?")[0] and "Traceback" not in res.output
        assert "milzoo recipes" in res.output
    res = run_cli("validate", "quikstart")
    assert res.output.count("\n") == 1 and res.output.startswith("error: there is no file 'quikstart'")
    with pytest.raises(UnknownRecipeError, match="ships no recipe 'classic/abmil_musk1'.*milzoo-abmil:classic"):
        recipebook.get_recipe("milzoo-dsmil:classic/abmil_musk1")
    with pytest.raises(UnknownRecipeError, match="no installed distribution 'milzoo-nope' ships.*'quickstart'"):
        recipebook.get_recipe("milzoo-nope:quikstart")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- the command


def test_recipes_lists_names_with_their_distribution():
    res = run_cli("recipes")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["name", "distribution", "description"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:] if line and not line.startswith("milzoo ")}
    assert rows["quickstart"] == "milzoo" and rows["classic/dtfd_musk1"] == "milzoo-dtfd"
    assert rows["wsi/abmil_camelyon16"] == "milzoo-wsi" and rows["psmil/fmnist/abmil"] == "milzoo-psmil"
    assert "ABMIL (attention) on MUSK1, 10-fold" in res.output  # the recipe's description
    res = run_cli("recipes", "--json", "--match", "classic/abmil_*")
    items = json.loads(res.output)
    assert {i["name"] for i in items} == {n for n in CHECKOUT if n.startswith("classic/abmil_")}
    assert all(i["distribution"] == "milzoo-abmil" and i["conflicts"] == [] for i in items)


def test_show_prints_the_file_and_copy_writes_it(tmp_path):
    text = CHECKOUT["quickstart"].read_text()
    res = run_cli("recipes", "show", "quickstart")
    assert res.exit_code == 0 and res.output == text
    assert run_cli("recipes", "copy", "quickstart", str(tmp_path)).exit_code == 0
    assert (tmp_path / "quickstart.toml").read_text() == text
    dest = tmp_path / "mine" / "dsmil.toml"
    res = run_cli("recipes", "copy", "classic/dsmil_musk1", str(dest))
    assert res.exit_code == 0 and dest.read_text() == CHECKOUT["classic/dsmil_musk1"].read_text()
    dest.write_text("# mine\n")
    res = run_cli("recipes", "copy", "quickstart", str(dest))
    assert res.exit_code == 2 and "--force" in res.output and dest.read_text() == "# mine\n"
    assert run_cli("recipes", "copy", "quickstart", str(dest), "--force").exit_code == 0
    assert dest.read_text() == text
    assert milzoo.load_recipe(str(dest)).root.name == "quickstart"


# --------------------------------------------------------------------------- third-party recipes and conflicts

_SHIPS = """
    from pathlib import Path

    from milzoo import hookimpl


    @hookimpl
    def milzoo_register_recipes(register):
        register(Path(__file__).parent / "{module}_recipes")
"""


def _fake(root: Path, dist: str, module: str, recipes: dict[str, str], source: str = _SHIPS) -> None:
    info = root / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[milzoo]\n{module} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source).replace("{module}", module))
    for name, text in recipes.items():
        path = root / f"{module}_recipes" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def site(tmp_path, monkeypatch):
    for var in ("MILZOO_LOAD_PLUGINS", "MILZOO_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "site"
    root.mkdir()
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m.startswith("fake_recipes_")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    plugins.reset_plugins()


def _activate():
    importlib.invalidate_caches()
    plugins.reset_plugins()


def test_a_third_party_recipe_by_name_and_a_contested_one(site, tmp_path, monkeypatch):
    mine = CHECKOUT["classic/abmil_musk1"].read_text().replace('name = "abmil_musk1"', 'name = "theirs"')
    _fake(site, "milzoo-fake-ships", "fake_recipes_a", {"quickstart": mine, "extra/own": mine})
    _activate()
    monkeypatch.chdir(tmp_path)
    assert recipebook.get_recipe("extra/own").distribution == "milzoo-fake-ships"
    with pytest.raises(AmbiguousRecipeError) as info:
        milzoo.load_recipe("quickstart")
    msg = str(info.value)
    assert "milzoo 0.1.0 and milzoo-fake-ships 0.3" in msg
    assert "milzoo:quickstart" in msg and "milzoo-fake-ships:quickstart" in msg and "\n" not in msg
    res = run_cli("validate", "quickstart")
    assert res.exit_code == 2 and "milzoo-fake-ships" in res.output
    # the qualified form always works, PEP 503 normalised
    assert milzoo.load_recipe("milzoo:quickstart").root.name == "quickstart"
    assert milzoo.load_recipe("milzoo_Fake_Ships:quickstart").root.name == "theirs"
    assert run_cli("validate", "milzoo-fake-ships:quickstart").exit_code == 0
    res = run_cli("recipes", "show", "quickstart")
    assert res.exit_code == 2
    res = run_cli("recipes")
    assert "[conflict: use milzoo:quickstart]" in res.output
    assert "[conflict: use milzoo-fake-ships:quickstart]" in res.output
    assert "recipe 'quickstart' is shipped by milzoo, milzoo-fake-ships" in res.output
    conflicted = [i for i in json.loads(run_cli("recipes", "--json").output) if i["name"] == "quickstart"]
    assert [i["conflicts"] for i in conflicted] == [["milzoo-fake-ships"], ["milzoo"]]


def test_a_broken_recipe_hook_fails_only_its_plugin(site):
    _fake(site, "milzoo-fake-broken", "fake_recipes_b", {}, source="""
        from milzoo import hookimpl


        @hookimpl
        def milzoo_register_recipes(register):
            register("/nonexistent/recipes")
    """)
    _fake(site, "milzoo-fake-twice", "fake_recipes_c", {"one": "name = 'x'\n"}, source="""
        from pathlib import Path

        from milzoo import hookimpl


        @hookimpl
        def milzoo_register_recipes(register):
            here = Path(__file__).parent / "fake_recipes_c_recipes"
            register(here)
            register(here / "one.toml", name="bad:name")
    """)
    _activate()
    assert recipebook.get_recipe("quickstart").distribution == "milzoo"
    failed = {r.distribution: r.error for r in plugins.failed_plugins()}
    assert "does not exist" in failed["milzoo-fake-broken"]
    assert "not valid" in failed["milzoo-fake-twice"]
    assert recipebook.providers("one") == []  # a failed hook registers nothing
    msg = str(pytest.raises(UnknownRecipeError, recipebook.get_recipe, "onne").value)
    assert "milzoo-fake-broken" in msg  # an unknown name mentions the plugins that failed
    plugins.reset_plugins()  # `milzoo plugins` runs the recipe hooks too, so it shows the failure
    res = run_cli("plugins", "--json")
    status = {r["distribution"]: r["status"] for r in json.loads(res.output)}
    assert status["milzoo-fake-broken"] == "failed" and status["milzoo-abmil"] == "ok"


def test_a_hostile_shipped_recipe_is_a_recipe_error_blaming_its_distribution(site, tmp_path, monkeypatch):
    _fake(site, "milzoo-fake-hostile", "fake_recipes_h", {
        "huge_int": "name = 'x'\nseed = " + "9" * 5000 + "\n",
        "deep": "name = 'x'\nv = " + "[" * 100_000 + "]" * 100_000 + "\n",
    })
    _activate()
    monkeypatch.chdir(tmp_path)
    for name in ("huge_int", "deep"):
        with pytest.raises(RecipeError, match="milzoo-fake-hostile"):
            milzoo.load_recipe(name)
        res = run_cli("validate", name)
        assert res.exit_code == 2 and "Traceback" not in res.output
    listing = run_cli("recipes")  # the listing still works, naming the unreadable ones
    assert listing.exit_code == 0 and "huge_int" in listing.output
