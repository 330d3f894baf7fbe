"""Shared fixtures: tiny classic-layout data and recipes that train in a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_classic_csv(path: Path, n_bags: int = 40, n_feat: int = 6, seed: int = 0, k: int = 2) -> Path:
    """Bags of 2-6 instances; a bag of class c>0 holds an instance whose feature c-1 is large."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(n_bags):
        y = b % k
        n = int(rng.integers(2, 7))
        x = rng.normal(0, 1, size=(n, n_feat))
        if y > 0:
            x[rng.integers(n), y - 1] += 4.0
        for inst in x:
            rows.append([y, b + 1, *inst])
    np.savetxt(path, np.array(rows), delimiter=",", fmt="%.6g")
    return path


@pytest.fixture
def classic_csv(tmp_path) -> Path:
    return write_classic_csv(tmp_path / "toy.csv")


def tiny_recipe(csv: Path, **sections) -> dict:
    recipe = {
        "name": "tiny",
        "seed": 0,
        "data": {"name": "classic", "path": str(csv)},
        "encoder": {"name": "mlp", "dims": [16]},
        "pooling": {"name": "abmil", "attn_hidden": 8},
        "loss": [{"name": "bag_ce"}],
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 3, "batch_size": 4, "progress": False, "threads": 1},
        "protocol": {"kind": "cv", "folds": 2, "standardize": True},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


@pytest.fixture
def recipe_factory(classic_csv):
    return lambda **sections: tiny_recipe(classic_csv, **sections)
