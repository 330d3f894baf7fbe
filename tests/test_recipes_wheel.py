"""What a `pip install milzoo milzoo-abmil` user gets: shipped recipes by name and the docs, from non-editable wheels.

Builds wheels of the core and of milzoo-abmil from copies of their sources (so the checkout gets no build/
or egg-info folders), installs them with --no-deps into a fresh virtualenv in tmp_path, and runs the CLI
from a directory outside the checkout.  The heavy dependencies (torch, pydantic, ...) come from the project
virtualenv through a .pth file pointing at a folder of links to its site-packages minus every milzoo
distribution, so the fresh environment sees only the two wheels' milzoo code, and nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what a source copy leaves out (build leftovers and caches; the plugin's tests are not part of its wheel)
_SKIP = ("__pycache__", "*.egg-info", "build", "dist", "*.pyc")


def _sh(*cmd, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def _build_wheels(tmp: Path) -> list[Path]:
    src = tmp / "src"
    core = src / "milzoo"
    core.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, core / name)
    shutil.copytree(ROOT / "docs", core / "docs")  # installed under share/doc/milzoo (pyproject data-files)
    shutil.copytree(ROOT / "milzoo", core / "milzoo", ignore=shutil.ignore_patterns(*_SKIP))
    plugin = src / "milzoo-abmil"
    shutil.copytree(ROOT / "plugins" / "milzoo-abmil", plugin, ignore=shutil.ignore_patterns(*_SKIP, "tests"))
    weights = src / "milzoo-weights-classic"
    shutil.copytree(ROOT / "plugins" / "milzoo-weights-classic", weights,
                    ignore=shutil.ignore_patterns(*_SKIP, "tests"))
    wheels = tmp / "wheels"
    _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", wheels,
        core, plugin, weights, timeout=240)
    return sorted(wheels.glob("*.whl"))


def _deps_view(tmp: Path) -> Path:
    """Links to every entry of the project's site-packages except milzoo's own distributions and .pth hooks."""
    view = tmp / "deps"
    view.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        low = entry.name.lower()
        if low.startswith(("milzoo", "__editable__")) or low.endswith(".pth"):
            continue
        (view / entry.name).symlink_to(entry)
    return view


def test_recipes_by_name_from_installed_wheels(tmp_path):
    wheels = _build_wheels(tmp_path)
    assert [w.name.split("-")[0] for w in wheels] == ["milzoo", "milzoo_abmil", "milzoo_weights_classic"], wheels
    with zipfile.ZipFile(wheels[2]) as zf:
        names = zf.namelist()
    for f in ("config.json", "README.md", "recipe.toml", "members/fold-09/model.safetensors"):
        assert f"milzoo_weights_classic/weights/abmil-musk1/{f}" in names, f"the weights wheel lacks {f}"
    for wheel, member in ((wheels[0], "milzoo/recipes/quickstart.toml"),
                          (wheels[1], "milzoo_abmil/recipes/classic/abmil_musk1.toml")):
        with zipfile.ZipFile(wheel) as zf:
            assert member in zf.namelist(), f"{wheel.name} lacks its recipes (package data)"
    with zipfile.ZipFile(wheels[0]) as zf:  # the HTML report's templates and style sheet
        assert {f"milzoo/report/templates/{n}" for n in ("report.html.j2", "parts.html.j2", "report.css")} <= \
            set(zf.namelist()), f"{wheels[0].name} lacks the report's templates (package data)"

    venv = tmp_path / "venv"
    _sh(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    purelib = _sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    Path(purelib, "project_deps.pth").write_text(f"{_deps_view(tmp_path)}\n")
    _sh(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "--quiet", *wheels)

    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MILZOO_", "PYTHON", "VIRTUAL_ENV"))} | {"OMP_NUM_THREADS": "1"}
    milzoo = venv / "bin" / "milzoo"

    def cli(*args):
        return _sh(milzoo, *args, cwd=away, env=env, timeout=240).stdout

    # the installed, non-editable copy answers: not the checkout's
    where = _sh(py, "-c", "import milzoo, milzoo_abmil; print(milzoo.__file__); print(milzoo_abmil.__file__)",
                cwd=away, env=env).stdout.split()
    assert all(w.startswith(purelib) for w in where), where

    # the documentation comes with the wheel, laid out as in the checkout, so the README's links work there
    docs = venv / "share" / "doc" / "milzoo"
    readme = (docs / "README.md").read_text()
    assert readme == (ROOT / "README.md").read_text() and (docs / "docs/methods.md").is_file()
    targets = {t.partition("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", readme) if not re.match(r"[a-z]+:", t)}
    assert "docs/methods.md" in targets and not [t for t in targets if not (docs / t).exists()], targets

    listing = cli("recipes")
    table = listing.split("\n\n")[0].splitlines()
    assert table[0].split() == ["name", "distribution", "description"], listing
    rows = {line.split()[0]: line.split()[1] for line in table[1:]}
    assert rows["quickstart"] == "milzoo" and rows["classic/abmil_musk1"] == "milzoo-abmil", listing
    assert not any(name.startswith(("psmil", "wsi/", "classic/dsmil")) for name in rows), listing  # not installed

    shown = cli("recipes", "show", "quickstart")
    assert shown == (ROOT / "recipes" / "quickstart.toml").read_text()
    cli("recipes", "copy", "classic/abmil_musk1", "mine.toml")
    assert (away / "mine.toml").read_text() == (ROOT / "recipes" / "classic" / "abmil_musk1.toml").read_text()

    # by name, as `milzoo validate NAME` (the same load_recipe); two folds of one epoch
    out = cli("run", "quickstart", "--out", "runs/qs", "--no-progress",
              "--set", "train.epochs=1", "--set", "protocol.folds=2")
    assert "quickstart (cv, 2 fold(s))" in out, out
    assert (away / "runs" / "qs" / "summary.json").is_file()
    # the report renders from the installed templates: ROC curves (inline SVG) and confusion matrices included
    assert "wrote" in cli("report", "runs/qs", "--no-embed", "--no-attention")
    page = (away / "runs" / "qs" / "report.html").read_text()
    assert 'id="roc"' in page and page.count("<svg") == 1 and 'class="confusion"' in page

    # a shipped model by name, from the installed weights wheel, with the Hub switched off
    listed = cli("list", "pretrained")
    assert "abmil-musk1" in listed and "[package milzoo_weights_classic]" in listed, listed
    loaded = _sh(py, "-c", "import milzoo; m = milzoo.load_pretrained('abmil-musk1'); "
                 "print(type(m).__name__, len(m.members))", cwd=away, env=env | {"HF_HUB_OFFLINE": "1"}).stdout
    assert loaded.split() == ["Ensemble", "10"], loaded

    # a recipe of a plugin that is not installed: one paragraph, exit 2, says to install the plugin
    res = subprocess.run([milzoo, "recipes", "show", "psmil_cifar10"], cwd=away, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "pip install" in res.stderr and "Traceback" not in res.stderr, res.stderr
