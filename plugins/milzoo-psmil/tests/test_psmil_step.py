"""PSAtt's prototype update and PSAli as one batched, sync-free step: the same numbers as the per-bag code
they replace (float64, tight tolerance), nothing read back to the host, and a step that torch.compile
captures whole."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from milzoo.components.output import MILOutput
from milzoo.datasets import FoldData
from milzoo.datasets.base import BagListDataset
from milzoo.datasets.batch import Bag
from milzoo.layers.masking import attention_pool
from milzoo.recipe import load_recipe
from milzoo.testing.dispatch import count_per_step
from milzoo.train import Trainer
from milzoo_psmil.loss import PSAliLoss
from milzoo_psmil.pooling import PSAttPooling

TIGHT = {"rtol": 0.0, "atol": 1e-12}


# --------------------------------------------------------------------------- the per-bag code (reference)
def per_bag_update(pool: PSAttPooling, out: MILOutput, batch) -> None:
    """The prototype update as it was written before it was batched: statistics per bag, then one Python
    loop over the bags with host reads (``int(label)``, ``bool(has.any())``, ``initialized.item()``)."""
    h = out.features.detach().double()
    mask = batch.mask
    m = mask.unsqueeze(-1).to(h.dtype)
    k = pool.num_classes
    Q = pool.Q
    assign = (h @ Q.to(h.dtype)).argmax(-1)
    bag_mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
    g = pool.config.gamma

    def maybe_init(means):
        if bool(pool.initialized.item()) or means.shape[0] == 0:
            return
        Q.copy_(means[0].to(Q.dtype).unsqueeze(1).expand(-1, k))
        pool.initialized.fill_(1)

    if pool.config.proto_update == "label":
        y = batch.y.long()
        sel = ((assign == y.unsqueeze(1)) & mask).unsqueeze(-1).to(h.dtype)
        count = sel.sum(1)
        inst_mean = (h * sel).sum(1) / count.clamp_min(1.0)
        bag_feat = attention_pool(out.attention.detach().to(h.dtype), h)
        new_cols = torch.where(count > 0, inst_mean, bag_feat)
        maybe_init(bag_mean)
        for b in range(new_cols.shape[0]):
            c = int(y[b])
            if c < 0:
                continue
            Q[:, c] = F.normalize((1 - g) * Q[:, c] + g * new_cols[b].to(Q.dtype), dim=0)
    else:
        onehot = F.one_hot(assign, k).to(h.dtype) * m
        counts = onehot.sum(1)
        cm = torch.einsum("bnk,bnd->bkd", onehot, h) / counts.clamp_min(1.0).unsqueeze(-1)
        maybe_init(bag_mean)
        for b in range(cm.shape[0]):
            has = counts[b] > 0
            if not bool(has.any()):
                continue
            blended = F.normalize((1 - g) * Q + g * cm[b].t().to(Q.dtype), dim=0)
            Q[:, has] = blended[:, has]


def per_bag_alignment(logits, mask, ce_input="logits"):
    """PSAli's L_ins as it was written before: rows to bags through ``mask.nonzero()``, bags kept by a mask."""
    target = PSAliLoss.targets(logits)
    scores = logits
    if ce_input == "probabilities":
        scores = torch.softmax(scores, dim=-1)
    logp = F.log_softmax(scores, dim=-1)
    nll = -logp.gather(-1, target.view(1, -1, 1).expand(logp.shape[0], -1, 1)).squeeze(-1)
    per_inst = nll.mean(0)
    bag_of_row = mask.nonzero(as_tuple=True)[0]
    sums = per_inst.new_zeros(mask.shape[0]).index_add(0, bag_of_row, per_inst)
    counts = mask.sum(1).to(per_inst.dtype)
    has = counts > 0
    return (sums[has] / counts[has]).mean()


def case(mode: str, seed: int, padded: bool, labels, initialised: bool, d=5, k=4, n=6):
    """A batch with repeated labels (bags of one class move its column in turn), an unknown label (-1)
    when asked, padding when asked; two pools with the same float64 prototypes."""
    g = torch.Generator().manual_seed(seed)
    b = len(labels)
    h = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    mask = torch.ones(b, n, dtype=torch.bool)
    if padded:
        for i in range(b):
            mask[i, 1 + (i * 2) % n:] = False
        h = h * mask.unsqueeze(-1)
    att = torch.softmax(torch.randn(b, n, generator=g, dtype=torch.float64).masked_fill(~mask, -1e9), 1) * mask
    pools = []
    for _ in range(2):
        pool = PSAttPooling(PSAttPooling.Config(gamma=0.3, proto_update=mode, proto_init="first_bag"), d, k).double()
        pool.train()
        if initialised:
            pool.Q.copy_(torch.randn(d, k, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64))
            pool.initialized.fill_(1)
        pools.append(pool)
    out = MILOutput(bag_logits=torch.zeros(b, k), mask=mask, attention=att, features=h)
    batch = SimpleNamespace(y=torch.tensor(labels), mask=mask)
    return pools, out, batch


@pytest.mark.parametrize("mode", ["label", "all"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("initialised", [False, True])
@pytest.mark.parametrize("labels", [[2], [1, 1, 3, 1], [0, 2, -1, 2, 0]], ids=["one", "repeated", "unknown"])
def test_batched_update_equals_the_per_bag_update(mode, padded, initialised, labels):
    (batched, reference), out, batch = case(mode, seed=len(labels) + padded, padded=padded, labels=labels,
                                            initialised=initialised)
    for step in range(3):  # three steps: the first may initialise, the later ones must not again
        batched.after_forward(out, batch)
        per_bag_update(reference, out, batch)
        torch.testing.assert_close(batched.Q, reference.Q, **TIGHT)
        assert int(batched.initialized) == int(reference.initialized) == 1
        out.features = out.features.roll(1, dims=1) * out.mask.unsqueeze(-1)


def test_update_reuses_the_forwards_scores_and_bag_feature():
    """In training the forward's own ``H Q`` and bag feature feed the update: the same prototypes as
    recomputing them (the forward's Q is the one the update starts from)."""
    torch.manual_seed(0)
    first = PSAttPooling(PSAttPooling.Config(gamma=0.2), 5, 3).double().train()
    pools = [first, copy.deepcopy(first)]
    h = torch.randn(3, 4, 5, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.bool)
    batch = SimpleNamespace(y=torch.tensor([1, 1, 2]), mask=mask)
    for step in range(3):
        outs = [p(h, mask) for p in pools]
        for o in outs:
            o.features = h
        assert "prototype_scores" in outs[0].extras
        pools[0].after_forward(outs[0], batch)
        bare = MILOutput(bag_logits=outs[1].bag_logits, mask=mask, attention=outs[1].attention, features=h)
        pools[1].after_forward(bare, batch)  # no extras: computed again from Q
        torch.testing.assert_close(pools[0].Q, pools[1].Q, **TIGHT)
        h = h + 0.5


def test_a_loaded_flag_is_honoured():
    """The host-side 'initialised' shortcut is reset by load_state_dict: a loaded untrained pooling
    initialises from its first bag; a loaded trained one keeps its prototypes."""
    fresh = PSAttPooling(PSAttPooling.Config(gamma=0.5), 2, 3).train()
    out = MILOutput(bag_logits=torch.zeros(1, 3), mask=torch.ones(1, 2, dtype=torch.bool),
                    attention=torch.full((1, 2), 0.5), features=torch.tensor([[[1.0, 2.0], [3.0, 0.0]]]))
    batch = SimpleNamespace(y=torch.tensor([1]), mask=out.mask)
    fresh.after_forward(out, batch)
    trained = fresh.state_dict()
    untrained = PSAttPooling(PSAttPooling.Config(gamma=0.5), 2, 3).state_dict()
    fresh.load_state_dict(untrained)  # back to Q = 0, flag 0
    fresh.after_forward(out, batch)
    assert torch.allclose(fresh.Q[:, 0], torch.tensor([2.0, 1.0]))  # initialised again from the first bag
    fresh.load_state_dict(trained)
    q = fresh.Q.clone()
    out.features = out.features * 10
    fresh.after_forward(out, batch)
    assert torch.equal(fresh.Q[:, 0], q[:, 0])  # no re-initialisation: column 0 is not the label's


@pytest.mark.parametrize("ce_input", ["logits", "probabilities"])
@pytest.mark.parametrize("lengths", [[4, 4, 4], [4, 1, 3], [2]])
def test_alignment_equals_the_per_bag_form_with_gradients(ce_input, lengths):
    torch.manual_seed(sum(lengths))
    n = max(lengths)
    mask = torch.tensor([[i < length for i in range(n)] for length in lengths])
    logits = torch.randn(3, int(mask.sum()), 5, dtype=torch.float64, requires_grad=True)
    want = per_bag_alignment(logits, mask, ce_input)
    (g_want,) = torch.autograd.grad(want, logits)
    unpadded = all(length == n for length in lengths)
    for flag in {None, unpadded}:
        got = PSAliLoss.alignment(logits, mask, ce_input=ce_input, unpadded=flag)
        (g_got,) = torch.autograd.grad(got, logits)
        torch.testing.assert_close(got, want, **TIGHT)
        torch.testing.assert_close(g_got, g_want, **TIGHT)


# --------------------------------------------------------------------------- the trainer's step
def trainer(tmp: Path, compile_mode=False, losses=None, batch_size=2, n_bags=6, lengths=(5,), device="cpu",
            precision="fp64"):
    g = torch.Generator().manual_seed(1)
    dtype = torch.float64 if precision == "fp64" else torch.float32
    bags = [Bag(torch.randn(lengths[i % len(lengths)], 6, generator=g, dtype=dtype), i % 3, index=i)
            for i in range(n_bags)]
    ds = BagListDataset(bags, ["a", "b", "c"])
    raw = {"data": {"name": "classic", "dataset": "musk1"}, "encoder": {"name": "mlp", "dims": [8], "dropout": 0.0},
           "pooling": {"name": "psatt", "gamma": 0.1},
           "loss": losses or [{"name": "bag_ce"},
                              {"name": "psali", "allow_single_view": True, "freeze_encoder_epochs": 0}],
           "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
           "train": {"device": device, "progress": False, "batch_size": batch_size, "epochs": 3,
                     "precision": precision, "grad_clip": 5.0, "compile": compile_mode}}
    torch.manual_seed(0)
    return Trainer(load_recipe(raw), FoldData(0, ds, None, {}), tmp, emit=lambda r: None), ds


@pytest.mark.parametrize("lengths", [(5,), (5, 3, 4)], ids=["one-size", "padded"])
def test_a_psmil_step_reads_nothing_back(tmp_path, lengths):
    """PSAtt (prototype update included) + bag CE + PSAli, as a GPU runs the step: no host synchronisation,
    with padded batches too (PSAli takes the rows by index)."""
    tr, ds = trainer(tmp_path, batch_size=2, lengths=lengths)
    tr.step_reads = False
    subsets = {n: ds.subset(range(2 * n)) for n in (2, 3)}

    def run(n):
        tr.data = FoldData(0, subsets[n], None, {})
        tr.train_epoch(1)

    count = count_per_step(run)
    assert count.syncs == 0, count.sync_sites
    assert count.ops > 0


def test_the_compiled_step_gives_the_eager_steps_numbers_without_a_graph_break(tmp_path):
    """train.compile = "step" (compiled here with the aot_eager backend: dynamo's capture and AOTAutograd's
    backward without code generation, seconds instead of minutes on a CPU): three epochs (PSAli's lambda
    changes every epoch) give the eager run's weights and prototypes, and the step is one graph."""
    from milzoo.train._compiled import CompiledStep
    from milzoo.train._epoch import forward_losses

    eager, _ = trainer(tmp_path / "eager")
    torch._dynamo.reset()
    compiled, ds = trainer(tmp_path / "compiled", compile_mode="step")
    assert isinstance(compiled.compiled_step, CompiledStep)
    compiled.compiled_step = CompiledStep(compiled, "step", backend="aot_eager")
    for epoch in range(3):
        a, b = eager.train_epoch(epoch), compiled.train_epoch(epoch)
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-12), key
    step = compiled.compiled_step
    assert step.disabled is None and step.calls == 9  # one eager (the fold's first), eight compiled
    for (name, x), y in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-12, msg=name)
    from milzoo.datasets.batch import collate_bags
    from milzoo.components.output import TrainState

    batch = collate_bags([ds[0], ds[1]])
    explained = torch._dynamo.explain(lambda b, s: forward_losses(compiled, b, s))(batch, TrainState(epoch=2))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.cuda
def test_the_captured_step_on_a_gpu_gives_the_eager_steps_numbers(tmp_path):
    """train.compile = "reduce-overhead" with inductor and CUDA graphs: the step is captured (no skip of the
    CUDA graphs: PSAtt's prototypes are updated in place inside the graph), and three epochs give the eager
    run's losses and weights to float32 tolerance."""
    from torch._dynamo.utils import counters

    runs = {}
    for mode in (False, "reduce-overhead"):
        torch._dynamo.reset()
        counters.clear()
        tr, _ = trainer(tmp_path / str(mode), compile_mode=mode, device="cuda", precision="fp32")
        stats = [tr.train_epoch(e) for e in range(3)]
        runs[mode] = (tr, stats, dict(counters["inductor"]))
    (eager, s_eager, _), (cap, s_cap, inductor) = runs[False], runs["reduce-overhead"]
    assert cap.compiled_step.disabled is None and cap.compiled_step.cuda_graphs
    assert not any(k.startswith("cudagraph_skips") and v for k, v in inductor.items()), inductor
    for a, b in zip(s_eager, s_cap):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    for (name, x), y in zip(eager.model.state_dict().items(), cap.model.state_dict().values()):
        torch.testing.assert_close(y.float(), x.float(), rtol=1e-4, atol=1e-5, msg=name)
