"""The third-party task of docs/tasks.md, taken from the page as it is, passes the contract suite."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from milzoo.testing import registered_plugins

ROOT = Path(__file__).resolve().parents[1]


def _doc_example() -> types.ModuleType:
    text = (ROOT / "docs" / "tasks.md").read_text()
    section = text[text.index("### Example: a third-party task"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("milzoo_docs_count_task")
    exec(compile(code, "docs/tasks.md", "exec"), module.__dict__)  # noqa: S102 - our own docs
    return module


@pytest.fixture()
def count_plugin():
    module = _doc_example()
    with registered_plugins({"docs-count-task": module}):
        yield module


def test_the_documented_task_and_its_loss_pass_the_contract_suite(count_plugin):
    from milzoo.testing import check_loss, check_task

    check_task(count_plugin.CountTask)
    check_loss(count_plugin.PoissonLoss)  # built under its contract_task, the registered "count" task


def test_the_documented_task_trains_through_the_trainer(count_plugin, tmp_path):
    import numpy as np
    import torch

    from milzoo.datasets import Bag, BagListDataset, FoldData
    from milzoo.recipe import load_recipe
    from milzoo.train import Trainer

    g = np.random.default_rng(0)
    bags = []
    for i in range(40):
        k = int(g.integers(0, 6))
        x = np.concatenate([g.normal(size=(k, 3)) + 3.0, g.normal(size=(8 - k, 3))]).astype(np.float32)
        bags.append(Bag(x=torch.from_numpy(x), y=float(k), bag_id=f"b{i}"))
    ds = BagListDataset(bags, ["count"])
    raw = {"data": {"name": "classic", "dataset": "musk1"}, "task": {"name": "count"},
           "pooling": {"name": "abmil"}, "optim": {"lr": 0.01}, "train": {"epochs": 15, "batch_size": 4}}
    tr = Trainer(load_recipe(raw), FoldData(0, ds, None, {"test": ds}), tmp_path, emit=lambda r: None)
    result = tr.fit(progress=False)
    assert result["last"]["test"]["mae"] < 1.0  # a mean predictor is off by about 1.5
    assert (tmp_path / "last" / "predictions-test.csv").read_text().startswith("bag_id,count,expected")
