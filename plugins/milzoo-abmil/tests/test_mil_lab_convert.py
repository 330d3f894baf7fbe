"""`milzoo convert mil-lab-abmil`: MIL-Lab's ABMIL (and its headless FEATHER weights) against a reference.

The reference below is written from mahmoodlab/MIL-Lab ``src/models/abmil.py`` and ``src/models/layers.py``
(``create_mlp``, ``GlobalAttention``, ``GlobalGatedAttention``, ``ABMIL.forward_attention/_features/_head``,
``ABMILModel`` wrapping it as ``self.model``), kept to their module structure so that its ``state_dict`` has the
official keys.  Nothing is downloaded: the weights are the reference's own random ones.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import milzoo
from milzoo.datasets.batch import Bag, collate_bags
from milzoo.errors import CheckpointWarning, ConversionError

# =========================================================================== reference (MIL-Lab, plain torch)


def ref_create_mlp(in_dim, hid_dims, out_dim, dropout):
    """create_mlp(..., act=nn.ReLU(), end_with_fc=False, end_with_dropout=False)."""
    layers = []
    for hid in hid_dims:
        layers += [nn.Linear(in_dim, hid), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = hid
    layers += [nn.Linear(in_dim, out_dim), nn.ReLU()]
    return nn.Sequential(*layers)


class RefGlobalAttention(nn.Module):
    def __init__(self, L, D, dropout, num_classes=1):
        super().__init__()
        self.module = nn.Sequential(nn.Linear(L, D), nn.Tanh(), nn.Dropout(dropout), nn.Linear(D, num_classes))

    def forward(self, x):
        return self.module(x)


class RefGlobalGatedAttention(nn.Module):
    def __init__(self, L, D, dropout, num_classes=1):
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(L, D), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(L, D), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(D, num_classes)

    def forward(self, x):
        return self.attention_c(self.attention_a(x).mul(self.attention_b(x)))


class RefABMIL(nn.Module):
    def __init__(self, in_dim=1024, embed_dim=512, num_fc_layers=1, dropout=0.25, attn_dim=384, gate=True,
                 num_classes=2):
        super().__init__()
        self.patch_embed = ref_create_mlp(in_dim, [embed_dim] * (num_fc_layers - 1), embed_dim, dropout)
        attn = RefGlobalGatedAttention if gate else RefGlobalAttention
        self.global_attn = attn(L=embed_dim, D=attn_dim, dropout=dropout, num_classes=1)
        if num_classes > 0:
            self.classifier = nn.Linear(embed_dim, num_classes)

    def forward_features(self, h, attn_mask=None):
        h = self.patch_embed(h)
        A = torch.transpose(self.global_attn(h), -2, -1)  # B x 1 x M
        if attn_mask is not None:
            A = A + (1 - attn_mask).unsqueeze(dim=1) * torch.finfo(A.dtype).min
        A_base = A
        A = F.softmax(A, dim=-1)
        return torch.bmm(A, h).squeeze(dim=1), A_base

    def forward(self, h, attn_mask=None):
        feats, _ = self.forward_features(h, attn_mask)
        return self.classifier(feats)


class RefABMILModel(nn.Module):
    """The Hugging Face wrapper (ABMILModel): the model is ``self.model``, so every key starts with ``model.``."""

    def __init__(self, **kwargs):
        super().__init__()
        self.model = RefABMIL(**kwargs)


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter drawn at random (MIL-Lab zeroes biases at init; a test needs them all to matter)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return module


def _bags(in_dim, sizes=(7, 12, 3), seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, in_dim, generator=gen, dtype=dtype) for n in sizes]


def _padded(xs):
    n = max(len(x) for x in xs)
    h = torch.zeros(len(xs), n, xs[0].shape[1], dtype=xs[0].dtype)
    mask = torch.zeros(len(xs), n, dtype=xs[0].dtype)
    for i, x in enumerate(xs):
        h[i, :len(x)] = x
        mask[i, :len(x)] = 1
    return h, mask


# =========================================================================== conversion with a head


@pytest.mark.parametrize("gate,num_fc_layers,form", [
    (True, 1, "safetensors-hf"), (False, 1, "pt"), (True, 2, "pt-wrapped"), (False, 3, "safetensors-hf"),
])
def test_converted_model_gives_the_reference_outputs(tmp_path, gate, num_fc_layers, form):
    ref = _randomised(RefABMILModel(in_dim=10, embed_dim=8, num_fc_layers=num_fc_layers, attn_dim=6, gate=gate,
                                    num_classes=3), seed=num_fc_layers).double().eval()
    if form == "safetensors-hf":
        src = tmp_path / "model.safetensors"
        save_file(ref.state_dict(), str(src))
    elif form == "pt":
        src = tmp_path / "pytorch_model.bin"
        torch.save(ref.model.state_dict(), src)  # the bare ABMIL: no "model." prefix
    else:
        src = tmp_path / "checkpoint.pt"
        torch.save({"epoch": 4, "state_dict": ref.state_dict()}, src)
    out = milzoo.convert("mil-lab-abmil", src, tmp_path / "hub", class_names=["a", "b", "c"])
    model = milzoo.load_pretrained(str(out))
    from milzoo.checkpoint import read_config

    cfg = read_config(out)
    assert cfg["head"] == "trained" and cfg["dtype"] == "float64"
    assert cfg["converted_from"]["format"] == "mil-lab-abmil"
    assert cfg["converted_from"]["wrapper"] == ("state_dict" if form == "pt-wrapped" else None)
    assert model.encoder.config.dims == [8] * num_fc_layers
    assert model.pooling.config.gated is gate and model.pooling.config.attn_dropout == 0.25
    xs = _bags(10)
    got = model.predict(collate_bags([Bag(x, 0) for x in xs]))
    h, mask = _padded(xs)
    with torch.no_grad():
        want = ref.model(h, attn_mask=mask)  # MIL-Lab's own padded batch with attn_mask
        feats, scores = ref.model.forward_features(h, attn_mask=mask)
        alone = torch.cat([ref.model(x[None]) for x in xs])
    torch.testing.assert_close(got.bag_logits, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.bag_logits, alone, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.extras["bag_feature"], feats, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.attention, torch.softmax(scores.squeeze(1), -1) * mask, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_fc_layers", [1, 2])
def test_training_mode_draws_the_same_dropout_as_mil_lab(tmp_path, num_fc_layers):
    """Same seed, one bag, train mode: dropout sits in the same places, so the outputs are identical."""
    ref = _randomised(RefABMILModel(in_dim=10, embed_dim=8, num_fc_layers=num_fc_layers, attn_dim=6, dropout=0.4,
                                    num_classes=2), seed=3).double()
    src = tmp_path / "w.pt"
    torch.save(ref.state_dict(), src)
    model = milzoo.load_pretrained(str(milzoo.convert("mil-lab-abmil", src, tmp_path / "hub",
                                                      options={"dropout": 0.4})))
    x = _bags(10, sizes=(9,))[0]
    model.train()
    ref.train()
    torch.manual_seed(11)
    got = model(collate_bags([Bag(x, 0)])).bag_logits
    torch.manual_seed(11)
    want = ref.model(x[None])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.manual_seed(12)
    assert not torch.allclose(model(collate_bags([Bag(x, 0)])).bag_logits, want)  # dropout does act


# =========================================================================== FEATHER: no head


def _feather(tmp_path, **kwargs):
    ref = _randomised(RefABMILModel(in_dim=12, embed_dim=16, num_fc_layers=1, attn_dim=6, num_classes=0, **kwargs),
                      seed=7).double().eval()
    folder = tmp_path / "abmil.base.uni.pc108-24k"
    folder.mkdir()
    save_file(ref.state_dict(), str(folder / "model.safetensors"))  # as the Hub repository ships it
    return ref, folder


def test_feather_weights_get_a_new_head_marked_untrained(tmp_path):
    ref, folder = _feather(tmp_path)
    assert not any("classifier" in k for k in ref.state_dict())
    with pytest.raises(ConversionError, match="without a classification head.*--num-classes"):
        milzoo.convert("mil-lab-abmil", folder, tmp_path / "none")
    out = milzoo.convert("mil-lab-abmil", folder, tmp_path / "hub", num_classes=4, options={"seed": 5})
    from milzoo.checkpoint import read_config

    cfg = read_config(out)
    assert cfg["head"] == "untrained"
    assert cfg["converted_from"]["untrained_parameters"] == ["pooling.classifier.bias", "pooling.classifier.weight"]
    assert any("no classification head" in n for n in cfg["converted_from"]["notes"])
    card = (out / "README.md").read_text()
    assert "The classification head is untrained" in card and "Not trained with milzoo" in card
    assert "`pooling.classifier.weight`" in card
    with pytest.warns(CheckpointWarning, match="head is newly initialised and untrained"):
        model = milzoo.load_pretrained(str(out))
    xs = _bags(12, sizes=(5, 20))
    got = model.predict(collate_bags([Bag(x, 0) for x in xs]))
    h, mask = _padded(xs)
    with torch.no_grad():
        feats, scores = ref.model.forward_features(h, attn_mask=mask)
    torch.testing.assert_close(got.extras["bag_feature"], feats, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.attention, torch.softmax(scores.squeeze(1), -1) * mask, rtol=1e-12, atol=1e-12)
    # MIL-Lab's initialize_classifier: kaiming_uniform_(relu) weights, zero bias; reproducible by seed
    w, b = model.pooling.classifier.weight.detach(), model.pooling.classifier.bias.detach()
    assert w.shape == (4, 16) and torch.equal(b, torch.zeros_like(b))
    bound = math.sqrt(6.0 / 16)
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.5 * bound
    again = milzoo.convert("mil-lab-abmil", folder, tmp_path / "again", num_classes=4, options={"seed": 5})
    other = milzoo.convert("mil-lab-abmil", folder, tmp_path / "other", num_classes=4, options={"seed": 6})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        assert torch.equal(milzoo.load_pretrained(str(again)).pooling.classifier.weight, w)
        assert not torch.equal(milzoo.load_pretrained(str(other)).pooling.classifier.weight, w)


def test_new_head_replaces_a_trained_one_only_when_asked(tmp_path):
    ref = _randomised(RefABMILModel(in_dim=6, embed_dim=8, attn_dim=4, num_classes=2), seed=1).double()
    src = tmp_path / "w.pt"
    torch.save(ref.state_dict(), src)
    with pytest.raises(ConversionError, match="trained 2-class head.*new_head=true"):
        milzoo.convert("mil-lab-abmil", src, tmp_path / "a", num_classes=5)
    out = milzoo.convert("mil-lab-abmil", src, tmp_path / "b", num_classes=5, options={"new_head": True})
    from milzoo.checkpoint import read_config

    cfg = read_config(out)
    assert cfg["head"] == "untrained"
    assert cfg["converted_from"]["dropped"] == ["classifier.bias", "classifier.weight"]


# =========================================================================== refusals


def _state(**kwargs):
    return {k: v.clone() for k, v in RefABMIL(in_dim=6, embed_dim=8, attn_dim=4, num_classes=2, **kwargs).state_dict()
            .items()}


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    state = _state()
    del state["global_attn.attention_c.bias"]
    state["global_attn.attention_d.weight"] = torch.zeros(1, 4)
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(ConversionError, match=r"missing 'global_attn.attention_c.bias'.*unexpected "
                                              r"'global_attn.attention_d.weight'"):
        milzoo.convert("mil-lab-abmil", tmp_path / "keys.pt", tmp_path / "out")
    state = _state()
    state["global_attn.attention_b.0.weight"] = torch.zeros(5, 8)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(ConversionError, match=r"'global_attn.attention_b.0.weight' is \(5, 8\), needs \(4, 8\)"):
        milzoo.convert("mil-lab-abmil", tmp_path / "shape.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pickled_objects_and_foreign_wrappers_are_refused(tmp_path):
    torch.save(RefABMILModel(in_dim=6, embed_dim=8, attn_dim=4), tmp_path / "whole.pt")
    with pytest.raises(ConversionError, match="weights_only=True.*model.safetensors"):
        milzoo.convert("mil-lab-abmil", tmp_path / "whole.pt", tmp_path / "out")
    torch.save({"weights": _state(), "epoch": 1}, tmp_path / "wrapped.pt")
    with pytest.raises(ConversionError, match="'weights', 'epoch'.*not tensors.*'state_dict_ema' or 'model_ema' or "
                                              "'state_dict' or 'model'"):
        milzoo.convert("mil-lab-abmil", tmp_path / "wrapped.pt", tmp_path / "out")
    torch.save({"patch_embed.0.weight": torch.zeros(8, 6)}, tmp_path / "other.pt")
    with pytest.raises(ConversionError, match="no attention network"):
        milzoo.convert("mil-lab-abmil", tmp_path / "other.pt", tmp_path / "out")


# =========================================================================== the options MIL-Lab needed


def test_attn_dropout_acts_only_in_training_and_passes_the_contract():
    from milzoo.errors import ComponentError
    from milzoo.testing import check_pooling
    from milzoo_abmil.pooling import ABMILPooling

    torch.manual_seed(0)
    plain = ABMILPooling(ABMILPooling.Config(gated=True), 6, 3)
    dropped = ABMILPooling(ABMILPooling.Config(gated=True, attn_dropout=0.5), 6, 3)
    assert list(plain.state_dict()) == list(dropped.state_dict())
    dropped.load_state_dict(plain.state_dict())
    h, mask = torch.randn(2, 5, 6), torch.ones(2, 5, dtype=torch.bool)
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped(h, mask).bag_logits, plain(h, mask).bag_logits, rtol=0, atol=0)
    dropped.train()
    assert not torch.allclose(dropped(h, mask).attention, plain(h, mask).attention)
    with pytest.raises(ComponentError, match="attn_dropout"):
        ABMILPooling(ABMILPooling.Config(attention="linear", attn_dropout=0.1), 6, 3)
    check_pooling(ABMILPooling, {"gated": True, "attn_dropout": 0.3})
