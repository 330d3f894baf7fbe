"""Old import paths keep working after the core became packages by concept (milzoo/_moved.py).

``tests/data/old_import_paths.json`` lists every ``from milzoo.X import name`` (and ``import milzoo.X``) that
plugins, tests, docs, benchmarks and recipes used before the move.  Each still gives the same object as its new
home; a module that no longer exists warns once with a FutureWarning naming the new place, and a package that
kept its name (``milzoo.registry``, ``milzoo.recipe``, ...) imports without a warning.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from milzoo import _moved

ROOT = Path(__file__).resolve().parents[1]
_DATA = json.loads((ROOT / "tests" / "data" / "old_import_paths.json").read_text())
OLD = _DATA["imports"]
#: public names the old modules defined that were dead code (nothing used them) and were removed
REMOVED = {("milzoo.pretrained", "is_registered"), ("milzoo.provenance", "CHECKPOINT_KINDS"),
           ("milzoo.recipe", "suggest_key")}
DEFINED = [tuple(p) for p in _DATA["defined"] if tuple(p) not in REMOVED]


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.mark.parametrize("module,name", [tuple(p) for p in OLD], ids=[f"{m}:{n}" for m, n in OLD])
def test_every_old_import_path_still_resolves(module, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mod = importlib.import_module(module)
        if not name:
            return
        try:
            value = getattr(mod, name)
        except AttributeError:  # a submodule (from milzoo.report import html)
            value = importlib.import_module(f"{module}.{name}")
    if module in _moved.MOVED_MODULES:  # the same object as in the new home
        new = importlib.import_module(_moved.new_home(module, name))
        assert getattr(new, name, None) is value or getattr(new, "__name__", None) == getattr(value, "__name__", 0)


def test_every_public_name_an_old_module_defined_still_resolves():
    """Not only the names this repository used: every public name of every old module (404 of them)."""
    missing = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for module, name in DEFINED:
            if not hasattr(importlib.import_module(module), name):
                missing.append(f"{module}.{name}")
    assert missing == []


def test_a_moved_module_warns_once_naming_its_new_place():
    out = _fresh("import warnings\n"
                 "with warnings.catch_warnings(record=True) as w:\n"
                 "    warnings.simplefilter('always')\n"
                 "    from milzoo.trainer import Trainer, FoldData\n"
                 "    import milzoo.trainer\n"
                 "    from milzoo.trainer import Trainer\n"
                 "from milzoo.train import Trainer as T2\n"
                 "from milzoo.datasets import FoldData as F2\n"
                 "assert Trainer is T2 and FoldData is F2\n"
                 "print([(x.category.__name__, str(x.message), x.filename) for x in w])\n")
    assert out.returncode == 0, out.stderr
    shown = eval(out.stdout.strip().splitlines()[-1])
    assert len(shown) == 1, shown
    category, message, filename = shown[0]
    assert category == "FutureWarning" and "milzoo.trainer moved to milzoo.train" in message
    assert filename == "<string>"  # points at the importing code, not at milzoo's machinery


def test_packages_that_kept_their_names_do_not_warn():
    out = _fresh("import warnings\nwarnings.simplefilter('error')\n"
                 "from milzoo.registry import get_component, list_components\n"
                 "from milzoo.recipe import load_recipe\n"
                 "from milzoo import checkpoint as ckpt\nckpt.save_model, ckpt.load_model\n"
                 "from milzoo.components import Pooling, ComponentConfig, MILOutput\n"
                 "from milzoo.cli import main\n"
                 "from milzoo.hub import load_pretrained\n")
    assert out.returncode == 0, out.stderr


def test_a_plugin_written_against_the_old_paths_still_works(tmp_path):
    """A third party's pooling written before the move (old import paths) still builds and runs, warning once
    per moved module; the shipped example plugin itself uses the new paths, so runs print no warning."""
    src = (ROOT / "plugins" / "milzoo-example-pooling" / "src" / "milzoo_example_pooling" / "pooling.py").read_text()
    assert "from milzoo.masking import" not in src and "from milzoo.output import" not in src
    old_src = src.replace("from milzoo.components import ComponentConfig, MILOutput, Pooling\n",
                          "from milzoo.components import ComponentConfig, Pooling\nfrom milzoo.output import MILOutput\n")
    old_src = old_src.replace("from milzoo.layers import masked_softmax", "from milzoo.masking import masked_softmax")
    assert old_src.count("from milzoo.masking import") == 1 and old_src.count("from milzoo.output import") == 1
    (tmp_path / "old_style_pooling.py").write_text(old_src.replace('name = "lse"', 'name = "lse_old_style"'))
    out = _fresh("import sys, warnings\n"
                 f"sys.path.insert(0, {str(tmp_path)!r})\n"
                 "with warnings.catch_warnings(record=True) as w:\n"
                 "    warnings.simplefilter('always')\n"
                 "    import torch\n"
                 "    import old_style_pooling\n"
                 "    from milzoo.datasets import Bag, collate_bags\n"
                 "    cls = old_style_pooling.LSEPooling\n"
                 "    pool = cls(cls.Config(), in_dim=4, num_classes=2)\n"
                 "    out = pool(torch.randn(2, 3, 4), collate_bags([Bag(torch.randn(3, 4), 0), Bag(torch.randn(2, 4), 1)]).mask)\n"
                 "    assert out.bag_logits.shape == (2, 2)\n"
                 "moved = sorted({str(x.message).split()[0] for x in w if x.category is FutureWarning})\n"
                 "print(moved)\n")
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout.strip().splitlines()[-1]) == ["milzoo.masking", "milzoo.output"]


def test_the_package_api():
    import milzoo

    assert isinstance(milzoo.__version__, str) and milzoo.__version__
    public = dir(milzoo)
    for name in ("run", "load_recipe", "build_model", "load_model", "load_pretrained", "MILModel", "hookimpl",
                 "__version__"):
        assert name in public
    assert not [n for n in public if n.startswith("_") and n != "__version__"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        milzoo.nope  # noqa: B018


def test_loading_every_installed_plugin_warns_about_no_moved_module():
    """The first-party plugins (the example plugin included) import from the new packages: a run prints no
    FutureWarning about moved modules."""
    out = _fresh("from milzoo import _moved\n"
                 "from milzoo.registry import get_component, list_components\n"
                 "for kind in ('encoder', 'pooling', 'loss', 'dataset'):\n"
                 "    for entry in list_components(kind):\n"
                 "        get_component(kind, entry['qualified'])\n"
                 "print(_moved.uses_by_package())\n")
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout.strip().splitlines()[-1]) == {}


def test_milzoo_plugins_names_a_plugin_that_imports_old_paths(tmp_path):
    (tmp_path / "oldstyle_plugin_x.py").write_text("from milzoo.masking import masked_softmax\n")
    out = _fresh("import sys, warnings\nwarnings.simplefilter('ignore')\n"
                 f"sys.path.insert(0, {str(tmp_path)!r})\n"
                 "import oldstyle_plugin_x\n"
                 "from milzoo.cli.listing import moved_import_lines\n"
                 "print(moved_import_lines([{'module': 'oldstyle_plugin_x', 'distribution': 'oldstyle-plugin'},\n"
                 "                          {'module': 'milzoo_abmil', 'distribution': 'milzoo-abmil'}]))\n")
    assert out.returncode == 0, out.stderr
    lines = eval(out.stdout.strip().splitlines()[-1])
    assert lines == ["note: oldstyle-plugin imports moved milzoo modules: milzoo.masking (now milzoo.layers). They "
                     "keep working for now; the plugin's author should import from the new places."]
