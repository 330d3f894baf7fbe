"""The Python API and the picture commands with input a model cannot score: a clear DataError (exit 2 on
the command line) naming the problem, never a raw torch error or silent NaN probabilities."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import milzoo
from milzoo.cli import add_all_commands, cli
from milzoo.errors import DataError
from milzoo.runs.runner import run

add_all_commands()


def write_classic_csv(path, n_feat, n_bags=16):
    """label, bag id, features: bags of 3 instances, class 1 with one shifted instance."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for b in range(n_bags):
        x = torch.randn(3, n_feat, generator=g)
        x[0, 0] += 4.0 * (b % 2)
        rows += [",".join([str(b % 2), str(b + 1), *(f"{v:.5f}" for v in inst.tolist())]) for inst in x]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    csv = write_classic_csv(tmp / "toy.csv", n_feat=6)
    out = tmp / "run"
    run({"name": "p", "data": {"name": "classic", "path": str(csv)}, "encoder": {"name": "mlp", "dims": [8]},
         "pooling": {"name": "mean"}, "train": {"epochs": 1, "progress": False, "threads": 1},
         "protocol": {"kind": "cv", "folds": 2, "standardize": True}}, out=out)
    return out


def one(x):
    return milzoo.collate_bags([milzoo.Bag(x=x, y=0, bag_id="b7")])


@pytest.mark.parametrize("batch, match", [
    (lambda: one(torch.randn(3, 5)), r"have 5 features \(tensor shape \[3, 5\]\), but this model was trained on "
                                     r"instances with 6 features"),
    (lambda: one(torch.randn(0, 6)), r"1 bag\(s\) of the batch hold no instances \(e.g. \['b7'\]\)"),
    (lambda: one(torch.randn(6)), r"no instance dimension .* x\[None\]"),
    (lambda: one(torch.randn(4, 2, 3)), r"have shape \[2, 3\]"),
    (lambda: one(torch.tensor([[0.0] * 5 + [float("nan")]])), "NaN or infinite"),
    (lambda: one(torch.full((2, 6), float("inf"))), "NaN or infinite"),
    (lambda: torch.randn(3, 6), "predict\\(\\) takes a MILBatch, not Tensor"),
])
def test_predict_refuses_what_it_cannot_score(trained, batch, match):
    model = milzoo.load_model(trained / "fold-00" / "last")
    with pytest.raises(DataError, match=match):
        model.predict(batch())


def test_predict_still_scores_good_bags(trained):
    model = milzoo.load_model(trained / "fold-00" / "last")
    batch = milzoo.collate_bags([milzoo.Bag(x=torch.randn(n, 6), y=0) for n in (1, 4, 2)])
    out = model.predict(batch)
    assert out.bag_probs.shape == (3, 2) and torch.isfinite(out.bag_probs).all()
    ints = model.predict(one(torch.ones(3, 6, dtype=torch.long)))  # integer features are converted
    assert torch.isfinite(ints.bag_probs).all()


@pytest.mark.parametrize("command", [["attention"], ["embed", "--method", "pca"]])
def test_picture_commands_with_data_of_another_shape(trained, tmp_path, command):
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(trained, moved)
    csv5 = write_classic_csv(tmp_path / "five.csv", n_feat=5)  # the data file changed since training
    recipe = (moved / "recipe.toml").read_text()
    old_path = next(line for line in recipe.splitlines() if line.startswith("path = "))
    (moved / "recipe.toml").write_text(recipe.replace(old_path, f'path = "{csv5}"'))
    result = CliRunner().invoke(cli, [*command, str(moved)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "5 features" in result.output and "6 features" in result.output
