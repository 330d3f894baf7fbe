"""Training sanity helpers for pooling tests: linear memory, a learnable toy problem, a short regression run.

Plugin authors call them from their own tests, next to the contract suite::

    from milzoo.testing import assert_learns_toy_problem, assert_memory_linear, assert_trains_regression

    def test_no_n_by_n_tensor_in_a_training_step():
        assert_memory_linear(MyPooling(MyPooling.Config(), 4, 2).train(), in_dim=4)

    def test_training_sanity_toy_problem():
        assert_learns_toy_problem(lambda in_dim, k: MyPooling(MyPooling.Config(), in_dim, k))

    def test_regression_task_trains_two_epochs(tmp_path):
        assert_trains_regression({"name": "my_pool"}, tmp_path, head=lambda pooling: pooling.classifier)

They use the global RNG as they go (seed it first, as the examples in milzoo's plugins do).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from milzoo.components.output import MILOutput


class ShapeRecorder(TorchDispatchMode):
    """A dispatch mode that records the shape of every tensor an operator returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def assert_memory_linear(
    pool: nn.Module, in_dim: int, n: int = 2000, padded: bool = False, batch: int = 2,
) -> tuple[MILOutput, list[tuple[int, ...]]]:
    """Check that a training step of ``pool`` keeps memory linear in the bag size.

    Runs the forward pass on ``batch`` random bags of ``n`` instances of ``in_dim`` features (with
    ``padded``, the last bag's final quarter is masked out) and the backward of ``bag_logits.sum() +
    attention.sum()`` under a :class:`ShapeRecorder`, then asserts that no tensor created on the way has
    two dimensions of size ``>= n`` (no n x n matrix) and that ``attention`` is ``[batch, n]``.  The pooling
    is used as given (put it in ``train()`` mode first).  Returns the output and the recorded shapes, for
    further checks.
    """
    h = torch.randn(batch, n, in_dim)
    mask = torch.ones(batch, n, dtype=torch.bool)
    if padded:
        mask[-1, n * 3 // 4:] = False
    rec = ShapeRecorder()
    with rec:
        out = pool(h, mask)
        (out.bag_logits.sum() + out.attention.sum()).backward()
    big = [s for s in rec.shapes if sum(d >= n for d in s) >= 2]
    assert not big, f"tensors with two dimensions >= {n}: {sorted(set(big))[:5]}"
    assert out.attention.shape == (batch, n)
    return out, rec.shapes


def assert_learns_toy_problem(
    pool_factory: Callable[[int, int], nn.Module], in_dim: int = 6, epochs: int = 40, lr: float = 3e-3,
) -> list[float]:
    """Check that a model around the pooling learns a toy MIL problem with full-batch Adam.

    24 bags of 4 to 8 instances of ``in_dim`` noisy features; a positive bag holds one instance shifted
    by 3 along feature 0.  ``pool_factory(in_dim, 2)`` builds the pooling (called after the data is drawn),
    wrapped in an identity encoder and trained for ``epochs`` steps of cross-entropy.  Asserts that the last
    loss is under half the first and that at least 90% of the bags are then classified correctly.
    Returns the losses.
    """
    from milzoo.builtin.encoders import IdentityEncoder
    from milzoo.datasets.batch import Bag, collate_bags
    from milzoo.model.mil import MILModel

    bags = []
    for i in range(24):  # positive bags contain one instance shifted along feature 0
        n = 4 + i % 5
        x = torch.randn(n, in_dim) * 0.5
        y = i % 2
        if y:
            x[i % n, 0] += 3.0
        bags.append(Bag(x=x, y=y))
    batch = collate_bags(bags)
    model = MILModel(IdentityEncoder(IdentityEncoder.Config(), (in_dim,)), pool_factory(in_dim, 2))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(batch).bag_logits, batch.y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    acc = (model.predict(batch).bag_logits.argmax(1) == batch.y).float().mean()
    assert acc >= 0.9, acc
    return losses


def assert_trains_regression(
    pooling_table: dict[str, Any], tmp_path: Path, epochs: int = 2,
    head: Callable[[nn.Module], nn.Module] | None = None,
) -> dict[str, Any]:
    """Check that a pooling trains a short regression run through the :class:`~milzoo.train.Trainer`.

    40 seeded bags of 3 to 9 instances of 8 features, target ``max(x[:, 0])``; 30 train, 10 test; the
    recipe's pooling table is ``pooling_table`` (``{"name": ..., **options}``), with an identity encoder,
    Adam (lr 1e-3), ``epochs`` epochs of batch size 4, written under ``tmp_path``.  Asserts that the last
    test loss and RMSE are finite and that ``last/predictions-test.csv`` has the header
    ``bag_id,target,pred``; with ``head`` (the pooling -> its final linear layer), also that the head has one
    output (one per target).  Returns the fold result of ``Trainer.fit``.
    """
    import numpy as np

    from milzoo.datasets import BagListDataset, FoldData
    from milzoo.datasets.batch import Bag
    from milzoo.recipe import load_recipe
    from milzoo.train import Trainer

    g = np.random.default_rng(0)
    bags = []
    for i in range(40):
        n = int(g.integers(3, 10))
        x = g.normal(size=(n, 8)).astype("float32")
        bags.append(Bag(x=torch.from_numpy(x), y=float(x[:, 0].max()), bag_id=f"b{i}", index=i))
    raw = {"name": "reg", "seed": 0, "data": {"name": "classic", "dataset": "musk1"}, "task": {"name": "regression"},
           "encoder": {"name": "identity"}, "pooling": dict(pooling_table),
           "optim": {"name": "adam", "lr": 1e-3}, "train": {"epochs": epochs, "batch_size": 4}}
    train, test = BagListDataset(bags[:30], ["target"]), BagListDataset(bags[30:], ["target"])
    tr = Trainer(load_recipe(raw), FoldData(0, train, None, {"test": test}), tmp_path, emit=lambda r: None)
    result = tr.fit(progress=False)
    if head is not None:
        assert head(tr.model.pooling).out_features == 1
    last = result["last"]["test"]
    assert np.isfinite(last["loss"]) and np.isfinite(last["rmse"]), last
    assert (Path(tmp_path) / "last" / "predictions-test.csv").read_text().splitlines()[0] == "bag_id,target,pred"
    return result
