"""CLAM-SB / CLAM-MB: faithfulness to the official code, masks, short bags, conversion, the contract suite."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from milzoo.components.output import TrainState
from milzoo.datasets.batch import Bag, collate_bags
from milzoo.errors import CheckpointError, ComponentError
from milzoo.testing import parametrize_with_checks
from milzoo_clam.loss import CLAMLoss, smooth_top1_svm
from milzoo_clam.pooling import CLAMMBPooling, CLAMSBPooling

# =========================================================================== reference (official code, plain torch)
# A transcription of mahmoodlab/CLAM models/model_clam.py (Attn_Net_Gated, CLAM_SB, CLAM_MB after the 2024-04
# CLAM_MB fix), of utils/core_utils.py train_loop_clam's loss (bag_weight * bag CE + (1 - bag_weight) * instance
# loss) and of oval-group/smooth-topk's SmoothTop1SVM (alpha = 1, tau = 1, thresh = 1e3), kept to their structure
# (one bag of shape [N, d], label of shape [1]) so that the two can be compared line by line.


class RefSmoothTop1SVM(nn.Module):
    def __init__(self, n_classes, alpha=1.0, tau=1.0, thresh=1e3):
        super().__init__()
        self.labels = torch.arange(n_classes)
        self.alpha, self.tau, self.thresh = alpha, tau, thresh

    def _delta(self, y):
        return self.alpha * torch.ne(y[:, None], self.labels[None, :]).to(torch.float64)

    def forward(self, x, y):
        top, _ = x.topk(2, 1)  # detect_large(x, k=1, tau, thresh)
        hard = torch.ge(top[:, 0] - top[:, 1], 1 * self.tau * math.log(self.thresh)).detach()
        smooth = hard.eq(0)
        loss = 0
        if smooth.sum():
            xs, ys = x[smooth].view(-1, x.size(1)), y[smooth]
            xs = xs + self._delta(ys) - xs.gather(1, ys[:, None])  # Top1_Smooth_SVM
            z = xs / self.tau
            mx, _ = z.max(1)
            lse = mx + torch.log(torch.sum(torch.exp(z - mx[:, None]), 1))
            loss += (self.tau * lse).sum() / x.size(0)
        if hard.sum():
            xh, yh = x[hard].view(-1, x.size(1)), y[hard]
            mx, _ = (xh + self._delta(yh)).max(1)  # Top1_Hard_SVM
            loss += (mx - xh.gather(1, yh[:, None]).squeeze(1)).sum() / x.size(0)
        return loss


class RefAttnNetGated(nn.Module):
    def __init__(self, L, D, dropout, n_classes):
        super().__init__()
        self.attention_a = nn.Sequential(*([nn.Linear(L, D), nn.Tanh()] + ([nn.Dropout(0.25)] if dropout else [])))
        self.attention_b = nn.Sequential(*([nn.Linear(L, D), nn.Sigmoid()] + ([nn.Dropout(0.25)] if dropout else [])))
        self.attention_c = nn.Linear(D, n_classes)

    def forward(self, x):
        return self.attention_c(self.attention_a(x).mul(self.attention_b(x))), x


class RefAttnNet(nn.Module):
    def __init__(self, L, D, dropout, n_classes):
        super().__init__()
        mods = [nn.Linear(L, D), nn.Tanh()] + ([nn.Dropout(0.25)] if dropout else []) + [nn.Linear(D, n_classes)]
        self.module = nn.Sequential(*mods)

    def forward(self, x):
        return self.module(x), x


class RefCLAM(nn.Module):
    """CLAM_SB (mb=False) or CLAM_MB (mb=True) of the official code."""

    def __init__(self, mb, gate=True, size_arg="small", dropout=0.0, k_sample=8, n_classes=2,
                 instance_loss_fn=None, subtyping=False, embed_dim=1024):
        super().__init__()
        size = {"small": [embed_dim, 512, 256], "big": [embed_dim, 512, 384]}[size_arg]
        branches = n_classes if mb else 1
        net = (RefAttnNetGated if gate else RefAttnNet)(L=size[1], D=size[2], dropout=dropout, n_classes=branches)
        self.attention_net = nn.Sequential(nn.Linear(size[0], size[1]), nn.ReLU(), nn.Dropout(dropout), net)
        if mb:
            self.classifiers = nn.ModuleList([nn.Linear(size[1], 1) for _ in range(n_classes)])
        else:
            self.classifiers = nn.Linear(size[1], n_classes)
        self.instance_classifiers = nn.ModuleList([nn.Linear(size[1], 2) for _ in range(n_classes)])
        self.mb, self.k_sample, self.n_classes, self.subtyping = mb, k_sample, n_classes, subtyping
        self.instance_loss_fn = instance_loss_fn or nn.CrossEntropyLoss()

    def inst_eval(self, A, h, classifier):
        if len(A.shape) == 1:
            A = A.view(1, -1)
        top_p = torch.index_select(h, dim=0, index=torch.topk(A, self.k_sample)[1][-1])
        top_n = torch.index_select(h, dim=0, index=torch.topk(-A, self.k_sample, dim=1)[1][-1])
        targets = torch.cat([torch.full((self.k_sample,), 1).long(), torch.full((self.k_sample,), 0).long()])
        logits = classifier(torch.cat([top_p, top_n], dim=0))
        return self.instance_loss_fn(logits, targets)

    def inst_eval_out(self, A, h, classifier):
        if len(A.shape) == 1:
            A = A.view(1, -1)
        top_p = torch.index_select(h, dim=0, index=torch.topk(A, self.k_sample)[1][-1])
        return self.instance_loss_fn(classifier(top_p), torch.full((self.k_sample,), 0).long())

    def forward(self, h, label=None, instance_eval=False):
        A, h = self.attention_net(h)
        A = torch.transpose(A, 1, 0)
        A_raw = A
        A = F.softmax(A, dim=1)
        total_inst_loss = 0.0
        if instance_eval:
            inst_labels = F.one_hot(label, num_classes=self.n_classes).squeeze()
            for i in range(len(self.instance_classifiers)):
                a = A[i] if self.mb else A
                if inst_labels[i].item() == 1:
                    loss = self.inst_eval(a, h, self.instance_classifiers[i])
                elif self.subtyping:
                    loss = self.inst_eval_out(a, h, self.instance_classifiers[i])
                else:
                    continue
                total_inst_loss += loss
            if self.subtyping:
                total_inst_loss /= len(self.instance_classifiers)
        M = torch.mm(A, h)
        if self.mb:
            logits = torch.empty(1, self.n_classes, dtype=M.dtype)
            for c in range(self.n_classes):
                logits[0, c] = self.classifiers[c](M[c])
        else:
            logits = self.classifiers(M)
        return logits, F.softmax(logits, dim=1), A_raw, total_inst_loss


def ref_total_loss(ref, x, y, bag_weight=0.7, bag_loss_fn=None):
    """train_loop_clam: total_loss = bag_weight * loss_fn(logits, label) + (1 - bag_weight) * instance_loss."""
    logits, _, _, inst = ref(x, label=torch.tensor([y]), instance_eval=True)
    bag = (bag_loss_fn or nn.CrossEntropyLoss())(logits, torch.tensor([y]))
    return bag_weight * bag + (1 - bag_weight) * inst, logits, inst


def official_state_from(pool) -> dict[str, torch.Tensor]:
    """Our pooling's weights under the official key layout (the inverse of milzoo_clam.convert.map_official)."""
    s = pool.state_dict()
    out = {"attention_net.0.weight": s["fc.weight"], "attention_net.0.bias": s["fc.bias"]}
    for leaf in ("weight", "bias"):
        if pool.config.gated:
            out[f"attention_net.3.attention_a.0.{leaf}"] = s[f"attn_a.{leaf}"]
            out[f"attention_net.3.attention_b.0.{leaf}"] = s[f"attn_b.{leaf}"]
            out[f"attention_net.3.attention_c.{leaf}"] = s[f"attn_c.{leaf}"]
        else:
            last = 3 if pool.config.dropout > 0 else 2
            out[f"attention_net.3.module.0.{leaf}"] = s[f"attn_a.{leaf}"]
            out[f"attention_net.3.module.{last}.{leaf}"] = s[f"attn_c.{leaf}"]
    for key, value in s.items():
        if key.startswith(("classifiers", "instance_classifiers")):
            out[key] = value
    return out


def _pair(cls, k, d, **opts):
    torch.manual_seed(0)
    pool = cls(cls.Config(**opts), d, k).double()
    ref = RefCLAM(mb=cls is CLAMMBPooling, gate=pool.config.gated, size_arg=pool.config.size,
                  dropout=pool.config.dropout, k_sample=pool.config.k_sample, n_classes=k,
                  subtyping=pool.config.subtyping, embed_dim=d).double()
    ref.load_state_dict(official_state_from(pool), strict=True)
    return pool, ref


def _bound_loss(pool, **opts):
    loss = CLAMLoss(CLAMLoss.Config(**opts), pool.num_classes)
    loss.bind(pool, None)
    return loss


FAITHFUL = [
    (cls, k, subtyping, inst_loss, gated)
    for cls in (CLAMSBPooling, CLAMMBPooling)
    for k, subtyping in ((2, False), (3, True), (2, True))
    for inst_loss, gated in (("svm", True), ("ce", False))
]


@pytest.mark.parametrize("cls,k,subtyping,inst_loss,gated", FAITHFUL,
                         ids=lambda v: getattr(v, "name", str(v)))
def test_faithful_to_the_official_forward_and_loss(cls, k, subtyping, inst_loss, gated):
    """Same weights, same bags (float64, train mode without dropout, as train_loop_clam): logits, probabilities,
    raw attention, instance loss, total loss and every gradient agree with the official code to 1e-10; a padded
    batch of several bags gives the mean of the per-bag official losses."""
    d = 6
    pool, ref = _pair(cls, k, d, subtyping=subtyping, gated=gated, dropout=0.0)
    if inst_loss == "svm":
        ref.instance_loss_fn = RefSmoothTop1SVM(2)
    pool.train(), ref.train()
    g = torch.Generator().manual_seed(1)
    lengths = (20, 17, 9, 33)  # >= 2 k_sample, and k_sample <= n < 2 k_sample (top and bottom sets overlap)
    bags = [Bag(torch.randn(n, d, generator=g, dtype=torch.float64) * 2, i % k) for i, n in enumerate(lengths)]
    batch = collate_bags(bags)
    loss = _bound_loss(pool, inst_loss=inst_loss)
    out = pool(batch.x, batch.mask)
    res = loss(out, batch, TrainState())
    ref_totals, ref_insts = [], []
    for i, bag in enumerate(bags):
        n = bag.x.shape[0]
        total, logits, inst = ref_total_loss(ref, bag.x, bag.y)
        _, probs, a_raw, _ = ref(bag.x)
        torch.testing.assert_close(out.bag_logits[i], logits[0], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(out.bag_probs[i], probs[0], atol=1e-10, rtol=1e-10)
        scores = out.extras["attention_scores"][i, :n]
        torch.testing.assert_close(scores, a_raw.t().squeeze(-1) if cls is CLAMSBPooling else a_raw.t(),
                                   atol=1e-10, rtol=1e-10)
        att = torch.softmax(a_raw, dim=1).t()
        torch.testing.assert_close(out.attention[i, :n], att.squeeze(-1) if cls is CLAMSBPooling else att,
                                   atol=1e-10, rtol=1e-10)
        # each bag alone: our loss on a batch of one equals the official loss
        alone = collate_bags([bag])
        one = loss(pool(alone.x, alone.mask), alone, TrainState())
        torch.testing.assert_close(one.total, total, atol=1e-10, rtol=1e-10)
        ref_totals.append(total)
        ref_insts.append(inst)
    torch.testing.assert_close(res.total, torch.stack(ref_totals).mean(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(res.parts["clam_inst"], 0.3 * torch.stack(ref_insts).mean().detach(),
                               atol=1e-10, rtol=1e-10)
    # gradients of the batch loss = gradients of the mean of the official per-bag losses
    ours = torch.autograd.grad(res.total, list(pool.parameters()), allow_unused=True)
    theirs_params = official_state_from_params(ref, pool)
    theirs = torch.autograd.grad(torch.stack(ref_totals).mean(), theirs_params, allow_unused=True)
    for name, a, b in zip([n for n, _ in pool.named_parameters()], ours, theirs):
        a = torch.zeros_like(b) if a is None and b is not None else a
        b = torch.zeros_like(a) if b is None and a is not None else b
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=name)


@pytest.mark.parametrize("cls,k,subtyping,inst_loss,gated", FAITHFUL,
                         ids=lambda v: getattr(v, "name", str(v)))
def test_bags_of_one_length_are_scored_at_once_with_the_per_bag_numbers(cls, k, subtyping, inst_loss, gated):
    """Bags without padding are scored all at once; the same bags with a padded row go bag by bag, each on its
    real rows: the same loss and gradients in float64 (each path also matches the official code: the test
    above, whose batch is padded and whose bags alone are not)."""
    d = 6
    pool, _ = _pair(cls, k, d, subtyping=subtyping, gated=gated, dropout=0.0)
    pool.train()
    loss = _bound_loss(pool, inst_loss=inst_loss)
    g = torch.Generator().manual_seed(2)
    bags = [Bag(torch.randn(12, d, generator=g, dtype=torch.float64) * 2, i % k) for i in range(5)]
    batch = collate_bags(bags)
    assert batch.host_lengths() == [12] * 5
    out = pool(batch.x, batch.mask)
    batched = loss.instance_loss(out, batch.y, batch.host_lengths())
    # the same bags with one padded row: every bag's outputs are the same, and the loss goes bag by bag
    x = torch.cat([batch.x, batch.x.new_zeros(5, 1, d)], dim=1)
    mask = torch.cat([batch.mask, batch.mask.new_zeros(5, 1)], dim=1)
    looped = loss.instance_loss(pool(x, mask), batch.y, [12] * 5)
    torch.testing.assert_close(batched, looped, atol=1e-12, rtol=1e-12)
    params = list(pool.parameters())
    for a, b in zip(torch.autograd.grad(batched, params, allow_unused=True),
                    torch.autograd.grad(looped, params, allow_unused=True)):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def official_state_from_params(ref, pool):
    """The reference's parameters in the order of pool.named_parameters()."""
    by_name = dict(ref.named_parameters())
    return [by_name[_official_name(pool, *name.rsplit(".", 1))] for name, _ in pool.named_parameters()]


def _official_name(pool, module, leaf):
    if module == "fc":
        return f"attention_net.0.{leaf}"
    if module in ("attn_a", "attn_b", "attn_c"):
        if pool.config.gated:
            inner = {"attn_a": "attention_a.0", "attn_b": "attention_b.0", "attn_c": "attention_c"}[module]
            return f"attention_net.3.{inner}.{leaf}"
        last = 3 if pool.config.dropout > 0 else 2
        return f"attention_net.3.module.{0 if module == 'attn_a' else last}.{leaf}"
    return f"{module}.{leaf}"


@pytest.mark.parametrize("cls", [CLAMSBPooling, CLAMMBPooling], ids=["sb", "mb"])
def test_faithful_in_eval_mode_with_dropout_and_big_preset(cls):
    pool, ref = _pair(cls, 3, 5, size="big", dropout=0.25, subtyping=True)
    pool.eval(), ref.eval()
    x = torch.randn(12, 5, dtype=torch.float64)
    out = pool(x[None], torch.ones(1, 12, dtype=torch.bool))
    logits, _, a_raw, _ = ref(x)
    torch.testing.assert_close(out.bag_logits[0], logits[0], atol=1e-10, rtol=1e-10)
    # the bag classifier on one instance = the official model on a one-instance bag
    torch.testing.assert_close(pool.instance_logits(x[:1])[0], ref(x[:1])[0][0], atol=1e-10, rtol=1e-10)
    assert pool.attn_c.out_features == (3 if cls is CLAMMBPooling else 1) and pool.attn_a.out_features == 384


def test_smooth_top1_svm_matches_the_reference_in_both_regimes():
    torch.manual_seed(0)
    x = torch.randn(30, 4, dtype=torch.float64) * 4
    x[:5, 0] += 20  # hard regime: the top score beats the second by more than log(1000)
    y = torch.randint(0, 4, (30,))
    x.requires_grad_(True)
    ours, ref = smooth_top1_svm(x, y), RefSmoothTop1SVM(4)(x, y)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0])


def test_short_bags_use_every_instance_and_respect_the_mask():
    """A bag shorter than k_sample (where the official topk stops with an error) uses all its instances; padding
    is never sampled: a padded batch gives each bag its loss alone."""
    torch.manual_seed(4)
    pool = CLAMSBPooling(CLAMSBPooling.Config(dropout=0.0, k_sample=8), 3, 2).double().eval()
    bags = [Bag(torch.randn(n, 3, dtype=torch.float64), n % 2) for n in (1, 3, 8, 25)]
    loss = _bound_loss(pool)
    batch = collate_bags(bags)
    res = loss(pool(batch.x, batch.mask), batch, TrainState())
    alone = [loss(pool(collate_bags([b]).x, collate_bags([b]).mask), collate_bags([b]), TrainState()) for b in bags]
    torch.testing.assert_close(res.total, torch.stack([a.total for a in alone]).mean())
    assert all(torch.isfinite(a.total) for a in alone)
    # the one-instance bag: its instance is both the top-1 (target 1) and the bottom-1 (target 0)
    one = collate_bags([bags[0]])
    out = pool(one.x, one.mask)
    logits = out.extras["cluster_logits"][0, :, bags[0].y]
    expected = smooth_top1_svm(torch.cat([logits, logits]), torch.tensor([1, 0]))
    torch.testing.assert_close(loss.instance_loss(out, one.y), expected)


def test_mb_attention_is_per_class_and_sums_to_one():
    pool = CLAMMBPooling(CLAMMBPooling.Config(), 4, 3).eval()
    batch = collate_bags([Bag(torch.randn(n, 4), 0) for n in (2, 5)])
    out = pool(batch.x, batch.mask)
    assert out.attention.shape == (2, 5, 3) and out.extras["cluster_logits"].shape == (2, 5, 3, 2)
    torch.testing.assert_close(out.attention.sum(1), torch.ones(2, 3))
    assert (out.attention[0, 2:] == 0).all() and (out.extras["cluster_logits"][0, 2:] == 0).all()


def test_tasks_and_loss_binding():
    # the networks serve every task; the clustering loss needs classes (tests/test_model_tasks.py: its refusal)
    assert CLAMSBPooling.tasks is None and CLAMMBPooling.tasks is None
    assert CLAMSBPooling.default_loss == "clam"
    cfg = CLAMSBPooling.Config()
    assert (cfg.size, cfg.gated, cfg.dropout, cfg.k_sample, cfg.subtyping) == ("small", True, 0.25, 8, False)
    lc = CLAMLoss.Config()
    assert (lc.bag_weight, lc.inst_loss, lc.bag_loss) == (0.7, "svm", "ce")
    from milzoo.builtin.poolings import MeanPooling

    with pytest.raises(ComponentError, match="clam_sb"):
        CLAMLoss(lc, 2).bind(MeanPooling(MeanPooling.Config(), 3, 2), None)


def test_learns_a_toy_problem():
    torch.manual_seed(0)
    pool = CLAMSBPooling(CLAMSBPooling.Config(dropout=0.0, k_sample=2), 4, 2)
    loss = _bound_loss(pool)
    opt = torch.optim.Adam(pool.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    bags = []
    for i in range(40):
        x = torch.randn(6, 4, generator=g)
        if i % 2:
            x[0, 0] += 5
        bags.append(Bag(x, i % 2))
    batch = collate_bags(bags)
    for _ in range(80):
        res = loss(pool(batch.x, batch.mask), batch, TrainState())
        opt.zero_grad()
        res.total.backward()
        opt.step()
    pool.eval()
    out = pool(batch.x, batch.mask)
    assert (out.bag_logits.argmax(1) == batch.y).float().mean() >= 0.95
    assert (out.attention[1::2].argmax(1) == 0).float().mean() >= 0.9


# =========================================================================== checkpoint conversion


@pytest.mark.parametrize("cls,gated,dropout,prefix", [
    (CLAMSBPooling, True, 0.25, ""), (CLAMMBPooling, True, 0.0, "module."),
    (CLAMSBPooling, False, 0.25, "module."), (CLAMMBPooling, False, 0.0, ""),
], ids=["sb-gated", "mb-gated-dataparallel", "sb-ungated-dataparallel", "mb-ungated"])
def test_converts_an_official_checkpoint(tmp_path, cls, gated, dropout, prefix):
    import milzoo
    from milzoo_clam.convert import convert_checkpoint

    torch.manual_seed(5)
    pool, ref = _pair(cls, 3, 7, gated=gated, dropout=dropout, size="big")
    ref = ref.float().eval()
    state = {prefix + k: v for k, v in ref.state_dict().items()}  # exactly the official module's keys
    src = tmp_path / "s_0_checkpoint.pt"
    torch.save(state, src)
    out_dir = convert_checkpoint(src, tmp_path / "converted", dropout=dropout, k_sample=4, subtyping=True,
                                 class_names=["a", "b", "c"])
    model = milzoo.load_model(out_dir)
    assert model.pooling.name == cls.name and model.pooling.config.size == "big"
    assert model.pooling.config.gated is gated and model.pooling.config.k_sample == 4
    x = torch.randn(11, 7)
    got = model.predict(collate_bags([Bag(x, 0)]))
    logits, probs, a_raw, _ = ref(x)
    torch.testing.assert_close(got.bag_logits[0], logits[0])
    torch.testing.assert_close(got.bag_probs[0], probs[0])
    a = a_raw.t().squeeze(-1) if cls is CLAMSBPooling else a_raw.t()
    torch.testing.assert_close(got.extras["attention_scores"][0], a)


@pytest.mark.parametrize("cls,gated", [(CLAMSBPooling, True), (CLAMMBPooling, False)], ids=["sb", "mb-ungated"])
def test_converted_float64_safetensors_give_the_official_outputs_on_a_padded_batch(tmp_path, cls, gated):
    """`milzoo convert clam`: a float64 .safetensors state dict, a padded batch vs the official forward per bag."""
    import milzoo
    from safetensors.torch import save_file

    from milzoo.checkpoint import read_config

    pool, ref = _pair(cls, 3, 6, gated=gated, dropout=0.0)  # ungated without dropout: module.2 is the last Linear
    ref.eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "s_1_checkpoint.safetensors"))
    out = milzoo.convert("clam", tmp_path / "s_1_checkpoint.safetensors", tmp_path / "hub")
    cfg = read_config(out)
    assert cfg["dtype"] == "float64" and cfg["converted_from"]["format"] == "clam" and cfg["head"] == "trained"
    model = milzoo.load_pretrained(str(out))
    assert model.pooling.name == cls.name and model.pooling.config.dropout == (0.25 if gated else 0.0)
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(n, 6, generator=gen, dtype=torch.float64) for n in (9, 20, 13)]
    got = model.predict(collate_bags([Bag(x, 0) for x in xs]))
    for i, x in enumerate(xs):
        logits, probs, _, _ = ref(x)
        torch.testing.assert_close(got.bag_logits[i], logits[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.bag_probs[i], probs[0], rtol=1e-12, atol=1e-12)


def test_conversion_names_missing_and_misshapen_keys(tmp_path):
    import milzoo

    _, ref = _pair(CLAMMBPooling, 3, 5)
    state = ref.state_dict()
    del state["instance_classifiers.2.bias"]
    torch.save(state, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match=r"missing 'instance_classifiers.2.bias'"):
        milzoo.convert("clam", tmp_path / "a.pt", tmp_path / "out")
    state = ref.state_dict()
    state["classifiers.1.weight"] = torch.zeros(2, 512, dtype=torch.float64)
    torch.save(state, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"'classifiers.1.weight' is \(2, 512\), needs \(1, 512\)"):
        milzoo.convert("clam", tmp_path / "b.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_what_is_not_a_plain_state_dict(tmp_path):
    from click.testing import CliRunner

    from milzoo.cli import add_all_commands, cli

    add_all_commands()
    from milzoo_clam.convert import read_official

    # a pickled module (the whole model object): weights_only refuses to unpickle it
    whole = tmp_path / "whole.pt"
    torch.save(RefCLAM(mb=False, embed_dim=4), whole)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "model": {"a": torch.zeros(1)}}, wrapped)
    plain_pickle = tmp_path / "object.pkl"
    plain_pickle.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    for path in (whole, wrapped, plain_pickle):
        with pytest.raises(CheckpointError, match="plain state dict of tensors"):
            read_official(path)
    result = CliRunner().invoke(cli, ["clam", "convert", str(whole), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "plain state dict of tensors" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_cli_converts(tmp_path):
    from click.testing import CliRunner

    import milzoo
    from milzoo.cli import add_all_commands, cli

    add_all_commands()

    _, ref = _pair(CLAMSBPooling, 2, 5)
    src = tmp_path / "ckpt.pt"
    torch.save(ref.float().state_dict(), src)
    result = CliRunner().invoke(cli, ["clam", "convert", str(src), str(tmp_path / "out"), "--k-sample", "6",
                                      "--class-names", "normal,tumor"])
    assert result.exit_code == 0, result.output
    model = milzoo.load_model(tmp_path / "out")
    assert model.pooling.config.k_sample == 6 and model.class_names == ["normal", "tumor"]


# =========================================================================== the contract suite


@parametrize_with_checks([
    CLAMSBPooling,
    (CLAMSBPooling, {"gated": False, "dropout": 0.0, "k_sample": 2}),
    (CLAMSBPooling, {"size": "big", "subtyping": True}),
    CLAMMBPooling,
    (CLAMMBPooling, {"gated": False, "subtyping": True, "k_sample": 1}),
    "loss:clam",
    (CLAMLoss, {"inst_loss": "ce", "bag_loss": "svm", "bag_weight": 0.5}),
])
def test_contract(component, check):
    check(component)
