"""What a plain run imports: never torch._dynamo (2-4 s) nor scikit-learn (1-4 s) -- docs/performance.md.

Each check runs in a fresh interpreter, so a heavy import that sneaks back (a module-level ``import sklearn``,
a torch.optim method that imports dynamo) fails here rather than costing every run seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch._dynamo", "sklearn", "scipy", "pandas", "matplotlib")


def _imported_after(code: str) -> dict[str, bool]:
    probe = code + f"\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_and_recipe_import_nothing_heavy():
    imported = _imported_after(
        "from milzoo.cli import add_all_commands, cli\n"
        "add_all_commands()\n"
        "from milzoo.recipe import load_recipe\n"
        "load_recipe('recipes/quickstart.toml')\n"
    )
    assert not any(imported.values()), imported


def test_a_cross_validation_run_imports_nothing_heavy(tmp_path):
    out = tmp_path / "run"
    imported = _imported_after(
        "from milzoo.runs.runner import run\n"
        f"s = run('recipes/quickstart.toml', out={str(out)!r}, progress=False, overrides=[\n"
        "    'train.epochs=1', 'protocol.folds=2', 'optim.name=adamw'])\n"
        "assert s['num_folds'] == 2\n"
    )
    assert not any(imported.values()), imported
    assert (out / "summary.json").exists()
