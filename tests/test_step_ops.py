"""Counting what a step dispatches (milzoo.testing.dispatch), the sync-free loss sums, and the compiled step's
set-up and fallbacks (train.compile = "step" / "reduce-overhead")."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from milzoo.datasets import FoldData
from milzoo.datasets.base import BagListDataset
from milzoo.datasets.batch import Bag
from milzoo.errors import RecipeError
from milzoo.recipe import load_recipe
from milzoo.testing.dispatch import StepCounter, count_per_step
from milzoo.train import Trainer


def syncs_of(fn) -> dict:
    with StepCounter() as c:
        fn()
    return {op: n for (reason, op, site), n in c.syncs.items()}


@pytest.mark.parametrize("fn, op", [
    (lambda x, m: x.sum().item(), "aten._local_scalar_dense"),
    (lambda x, m: bool(x.sum() > 0), "aten._local_scalar_dense"),
    (lambda x, m: m.nonzero(), "aten.nonzero"),
    (lambda x, m: x[m], "aten.index"),
    (lambda x, m: x.clone().index_put_((m,), torch.tensor(0.0)), "aten.index_put_"),
    (lambda x, m: torch.arange(3).repeat_interleave(torch.tensor([1, 2, 0])), "aten.repeat_interleave"),
    (lambda x, m: x.tolist(), "Tensor.tolist"),
    (lambda x, m: x.cpu(), "Tensor.cpu"),
    (lambda x, m: torch.tensor(0.5, device=x.device), "torch.tensor"),
    (lambda x, m: F.one_hot(torch.tensor([1, 0])), "one_hot"),
    (lambda x, m: torch.equal(x, x), "aten.equal"),
], ids=["item", "bool", "nonzero", "bool-index", "bool-index-put", "repeat_interleave", "tolist", "cpu",
        "tensor-on-device", "one_hot-without-classes", "equal"])
def test_the_counter_flags_what_waits_for_a_gpu(fn, op):
    x, m = torch.randn(4), torch.tensor([True, False, True, True])
    assert op in syncs_of(lambda: fn(x, m))


def test_the_counter_leaves_asynchronous_work_alone():
    x, m, i = torch.randn(4), torch.tensor([True, False, True, True]), torch.tensor([0, 2])

    def work():
        torch.where(m, x, 0.0)
        x[i]
        x.new_full((), 0.5)
        F.one_hot(torch.tensor([1, 0]), 3)  # a GPU kernel does not read the range when the classes are given
        torch.searchsorted(torch.tensor([1, 3]), torch.arange(4), right=True)
        torch.arange(3).repeat_interleave(torch.tensor([1, 2, 0]), output_size=3)

    assert syncs_of(work) == {}
    with StepCounter() as c:
        work()
    assert c.total > c.kernels > 0  # views (x[i] is not one, select/unsqueeze inside are) are not kernels


def test_count_per_step_is_the_difference_of_two_runs():
    calls = []

    def run(n):
        torch.ones(3).sum()  # once per run: cancels out
        for _ in range(n):
            (torch.ones(2) * 2).sum().item()
        calls.append(n)

    count = count_per_step(run)
    assert calls == [2, 3, 2, 3]  # the warm-up runs both, uncounted
    assert count.ops == 4 and count.syncs == 1
    assert count.by_op == {"aten.ones": 1, "aten.mul": 1, "aten.sum": 1, "aten._local_scalar_dense": 1}


def test_replayed_code_counts_as_one_launch_per_graph():
    with StepCounter() as c:
        torch.ones(2).sum()
        with c.replayed(2):
            for _ in range(10):
                torch.ones(2).sum().item()
        assert StepCounter.active() is c
    assert c.ops == {"aten.ones": 1, "aten.sum": 1, "cuda_graph_replay": 2} and not c.syncs
    assert StepCounter.active() is None
    with StepCounter() as c:
        with c.replayed(1, input_copies=1):
            torch.ones(2)
    assert c.ops == {"cuda_graph_replay": 1, "cuda_graph_input_copy": 1} and c.kernels == 2


# --------------------------------------------------------------------------- loss sums
@pytest.mark.parametrize("host", [True, False])
def test_loss_sums_are_the_python_float_sums_on_both_paths(host):
    from milzoo.train import LossSums

    g = torch.Generator().manual_seed(0)
    sums = LossSums(torch.device("cpu"), host=host)
    want: dict[str, float] = {}
    for step, n in enumerate([1, 3, 2, 3]):
        total = torch.rand((), generator=g) * 3
        parts = {"ce": torch.rand((), generator=g).to(torch.bfloat16), "wide": torch.rand((), generator=g).double(),
                 "lam": 0.25 * step}
        sums.add(total, parts, n, step)
        want["loss"] = want.get("loss", 0.0) + float(total) * n
        for k, v in parts.items():
            want[k] = want.get(k, 0.0) + float(v) * n
    last = torch.tensor(1.0), {"ce": torch.tensor(0.5), "wide": torch.tensor(0.5), "lam": 0.0}
    with StepCounter() as c:
        sums.add(*last, 1, 4)
    if not host:  # on the device path a step costs one operator (a stack) and reads nothing back
        assert c.total == 1 and not c.syncs
    for k, v in (("loss", 1.0), ("ce", 0.5), ("wide", 0.5), ("lam", 0.0)):
        want[k] += v
    got = sums.read()
    assert list(got) == ["loss", "ce", "wide", "lam"]
    assert got == want  # exact
    sums.add(torch.tensor(float("nan")), {}, 1, 11)
    sums.add(torch.tensor(float("inf")), {}, 1, 12)
    assert sums.diverged_at() == 11


# --------------------------------------------------------------------------- the compiled step
def _trainer(tmp_path, lengths, compile_mode="step", batch_size=2, n=5):
    bags = [Bag(torch.randn(lengths[i % len(lengths)], 3), i % 2) for i in range(n)]
    raw = {"data": {"name": "classic", "dataset": "musk1"}, "encoder": {"name": "mlp", "dims": [4], "dropout": 0.0},
           "pooling": {"name": "mean"}, "loss": [{"name": "bag_ce"}],
           "train": {"device": "cpu", "progress": False, "batch_size": batch_size, "compile": compile_mode}}
    return Trainer(load_recipe(raw), FoldData(0, BagListDataset(bags, ["a", "b"]), None, {}), tmp_path,
                   emit=lambda r: None)


def _light(tr):
    from milzoo.train._compiled import CompiledStep

    torch._dynamo.reset()
    tr.compiled_step = CompiledStep(tr, tr.recipe.root.train.compile, backend="aot_eager")
    return tr.compiled_step


def test_compile_settings_are_validated():
    base = {"data": {"name": "classic", "dataset": "musk1"}, "pooling": {"name": "mean"}}
    for value in (False, True, "encoder", "step", "reduce-overhead"):
        assert load_recipe({**base, "train": {"compile": value}}).root.train.compile == value
    with pytest.raises(RecipeError, match="compile"):
        load_recipe({**base, "train": {"compile": "graphs"}})


def test_compile_step_captures_batches_of_the_first_shape_only(tmp_path, caplog):
    """5 bags of equal length, 2 per step: the fold's first step is eager, then two full batches are
    captured per epoch and the shorter last one runs eagerly (and the log says so)."""
    tr = _trainer(tmp_path, [4])
    assert tr.model.encoder._compiled_call_impl is None  # the step is compiled, not the encoder
    step = _light(tr)
    with caplog.at_level(logging.INFO, logger="milzoo.train._compiled"):
        tr.train_epoch(0)
        tr.train_epoch(1)
    assert step.disabled is None and step.shape[0] == (2, 4, 3) and step.calls == 6
    assert "2 steps captured" in caplog.text and "1 eager" in caplog.text


def test_compile_step_falls_back_on_padded_bags(tmp_path, caplog):
    tr = _trainer(tmp_path, [4, 2, 3])
    step = _light(tr)
    with caplog.at_level(logging.WARNING, logger="milzoo.train._compiled"):
        tr.train_epoch(0)
    assert step.disabled is not None and "padded" in step.disabled
    assert "training continues eagerly" in caplog.text
    assert step.compiled_steps == 0


def test_compile_step_falls_back_on_a_graph_break(tmp_path, caplog):
    """A component that reads a value back (here a pooling that branches on a tensor) cannot be captured
    whole: one warning, and the fold trains eagerly with the same numbers."""
    tr = _trainer(tmp_path, [4])
    pooling = tr.model.pooling
    forward = pooling.forward

    def branching(h, mask):
        out = forward(h, mask)
        if bool(out.bag_logits.sum() > 1e9):  # a host read: a graph break under fullgraph=True
            out.bag_logits = out.bag_logits * 0
        return out

    pooling.forward = branching
    step = _light(tr)
    with caplog.at_level(logging.WARNING, logger="milzoo.train._compiled"):
        stats = tr.train_epoch(0)
    assert step.disabled is not None and "cannot be captured" in caplog.text
    assert step.compiled_steps == 0 and stats["loss"] > 0


def test_every_fold_of_a_process_gets_its_own_compiled_step(tmp_path):
    """dynamo keeps graphs, and its limit of recompilations (8), per code object: each trainer's step has its
    own, so every fold of a process compiles its own graph, and no fold can find the limit reached by the folds
    before it (which turns the capture off without an error)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    for fold in range(10):
        tr = _trainer(tmp_path / str(fold), [4])
        step = _light(tr) if fold == 0 else _keep_cache(tr)
        tr.train_epoch(0)  # 5 bags, 2 per step: eager (the first), captured, eager (the last, shorter one)
        assert step.disabled is None and step.calls == 3
        assert counters["stats"]["unique_graphs"] == fold + 1, fold


def _keep_cache(tr):
    from milzoo.train._compiled import CompiledStep

    tr.compiled_step = CompiledStep(tr, "step", backend="aot_eager")
    return tr.compiled_step


def test_a_step_inductor_would_not_make_a_cuda_graph_is_said_once(tmp_path, caplog, monkeypatch):
    """On a GPU, "reduce-overhead" checks after the first compiled step whether inductor skipped the CUDA graph
    (CPU work in the region, ...) and says so once; simulated here by setting the flag and the counter."""
    from torch._dynamo.utils import counters

    tr = _trainer(tmp_path, [4])
    step = _light(tr)
    step.cuda_graphs = True
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
    compiled = step.compiled

    def skipping(*args, **kwargs):
        counters["inductor"]["cudagraph_skips"] += 1
        return compiled(*args, **kwargs)

    step.compiled = skipping
    with caplog.at_level(logging.WARNING, logger="milzoo.train._compiled"):
        tr.train_epoch(0)
        tr.train_epoch(1)
    assert caplog.text.count("did not capture it as a CUDA graph") == 1
    assert step.disabled is None


def test_loss_buffers_are_kept_at_one_address_for_cuda_graphs(tmp_path, monkeypatch):
    """A loss's per-bag state (DEMIL's soft labels) is updated inside the captured step: like the model's buffers
    it is marked static, or inductor would not make the step a CUDA graph."""
    from milzoo.train._compiled import CompiledStep

    tr = _trainer(tmp_path, [4])
    tr.losses[0].register_buffer("state", torch.zeros(3))
    marked = []
    monkeypatch.setattr(torch._dynamo, "mark_static_address", lambda t: marked.append(t))
    tr.device = torch.device("cuda")  # only read to decide on CUDA graphs; nothing runs
    CompiledStep(tr, "reduce-overhead", backend="aot_eager")
    assert any(t is tr.losses[0].state for t in marked)
    assert all(any(t is b for t in marked) for b in tr.model.buffers())


def test_the_gpu_call_runs_every_test_marked_cuda():
    """benchmarks/gpu_check.py runs `pytest -m cuda` on a list of files: a test marked cuda elsewhere would never
    run on the rare GPU call."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    source = (root / "benchmarks" / "gpu_check.py").read_text()
    listed = set(re.findall(r'"([^"]+\.py)"', source.split("CUDA_TEST_FILES = [", 1)[1].split("]", 1)[0]))
    marked = {str(p.relative_to(root)) for p in [*root.glob("tests/test_*.py"), *root.glob("plugins/*/tests/test_*.py")]
              if re.search(r"^\s*@pytest\.mark\.cuda\b", p.read_text(), re.M)}
    assert "tests/test_step_capture.py" in marked and marked <= listed, sorted(marked - listed)


def test_the_benchmark_prints_its_counts(tmp_path):
    """benchmarks/step_ops.py (docs/performance.md's tables) still runs: one row of the trainer's ABMIL step,
    eager and captured, and the written-out floor, with ratios and no synchronisation."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from milzoo import registry

    if "abmil" not in registry.names("pooling"):
        pytest.skip("the abmil plugin is not installed")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "step_ops.py"
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(script), "--configs", "abmil", "--bags-per-step", "1", "--floor",
                           "--json", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["config"]: r for r in json.loads(out.read_text())}
    trainer, floor = rows["abmil"], rows["abmil_floor"]
    assert "ops_ratio=" in done.stdout and "syncs_per_step=0" in done.stdout
    assert trainer["syncs_per_step"] == floor["syncs_per_step"] == 0
    assert trainer["supervised_ops"] == floor["supervised_ops"] > 0
    # the trainer's step does more than the written-out one (gather, mask, clipping, loss sums), the captured
    # step far less: two graph replays with their input copies and the work outside them
    assert floor["mil_ops"] < trainer["mil_ops"]
    assert trainer["captured_ops"] < trainer["supervised_ops"] < floor["mil_ops"]
    assert trainer["captured_by_op"]["cuda_graph_replay"] == trainer["captured_by_op"]["cuda_graph_input_copy"] == 2
