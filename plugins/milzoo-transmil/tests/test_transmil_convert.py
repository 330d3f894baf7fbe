"""`milzoo convert transmil`: checkpoints of the official TransMIL code against a reference of that code.

The reference is written from szc19990412/TransMIL ``models/TransMIL.py`` (``TransLayer``, ``PPEG``, ``TransMIL``)
and from the ``NystromAttention`` of lucidrains/nystrom-attention that it imports, in the release the official
``requirements.txt`` pins (0.0.9: ``out[:, :n]`` after front padding) and in the fixed one (0.0.10+:
``out[:, -n:]``).  The official model hard-codes 1024 -> 512; the reference takes ``in_dim`` and ``dim`` as
parameters and keeps every formula (8 heads of ``dim // 8``, ``dim // 2`` landmarks) so that the tests stay fast.
Its state dict has the official keys, saved as the Lightning module (``model.`` prefix, under ``state_dict``).
Nothing is downloaded.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

import milzoo
from milzoo.datasets.batch import Bag, collate_bags
from milzoo.errors import ConversionError


# =========================================================================== reference (official code, plain torch)


def ref_pinv(x, iters=6):
    """moore_penrose_iter_pinv: the maxima over the whole tensor."""
    abs_x = torch.abs(x)
    col, row = abs_x.sum(dim=-1), abs_x.sum(dim=-2)
    z = x.transpose(-1, -2) / (torch.max(col) * torch.max(row))
    eye = torch.eye(x.shape[-1], dtype=x.dtype)[None]
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - (xz @ (15 * eye - (xz @ (7 * eye - xz)))))
    return z


class RefNystromAttention(nn.Module):
    def __init__(self, dim, dim_head=64, heads=8, num_landmarks=256, pinv_iterations=6, residual_conv_kernel=33,
                 dropout=0.0, release="0.0.9"):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.m, self.iters, self.release = heads, dim_head, num_landmarks, pinv_iterations, release
        self.scale = dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        k = residual_conv_kernel
        self.res_conv = nn.Conv2d(heads, heads, (k, 1), padding=(k // 2, 0), groups=heads, bias=False)

    def forward(self, x):
        b, n, _ = x.shape
        h, m, d = self.heads, self.m, self.dim_head
        if n % m > 0:
            x = F.pad(x, (0, 0, m - n % m, 0), value=0)
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, h, d).transpose(1, 2) for t in (q, k, v))  # 'b n (h d) -> b h n d'
        q = q * self.scale
        l = math.ceil(n / m)
        q_land = q.reshape(b, h, m, l, d).sum(3) / l  # reduce '... (n l) d -> ... n d', 'sum'; / divisor
        k_land = k.reshape(b, h, m, l, d).sum(3) / l
        attn1 = (q @ k_land.transpose(-1, -2)).softmax(dim=-1)
        attn2 = (q_land @ k_land.transpose(-1, -2)).softmax(dim=-1)
        attn3 = (q_land @ k.transpose(-1, -2)).softmax(dim=-1)
        out = (attn1 @ ref_pinv(attn2, self.iters)) @ (attn3 @ v)
        out = out + self.res_conv(v)
        out = self.to_out(out.transpose(1, 2).reshape(b, -1, h * d))
        return out[:, :n] if self.release == "0.0.9" else out[:, -n:]


class RefTransLayer(nn.Module):
    def __init__(self, dim=512, release="0.0.9"):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = RefNystromAttention(dim=dim, dim_head=dim // 8, heads=8, num_landmarks=dim // 2,
                                        pinv_iterations=6, dropout=0.1, release=release)

    def forward(self, x):
        return x + self.attn(self.norm(x))


class RefPPEG(nn.Module):
    def __init__(self, dim=512):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def forward(self, x, H, W):
        B, _, C = x.shape
        cls_token, feat_token = x[:, 0], x[:, 1:]
        cnn_feat = feat_token.transpose(1, 2).view(B, C, H, W)
        x = self.proj(cnn_feat) + cnn_feat + self.proj1(cnn_feat) + self.proj2(cnn_feat)
        x = x.flatten(2).transpose(1, 2)
        return torch.cat((cls_token.unsqueeze(1), x), dim=1)


class RefTransMIL(nn.Module):
    def __init__(self, n_classes, in_dim=1024, dim=512, release="0.0.9"):
        super().__init__()
        self.pos_layer = RefPPEG(dim=dim)
        self._fc1 = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.n_classes = n_classes
        self.layer1 = RefTransLayer(dim=dim, release=release)
        self.layer2 = RefTransLayer(dim=dim, release=release)
        self.norm = nn.LayerNorm(dim)
        self._fc2 = nn.Linear(dim, self.n_classes)

    def forward(self, data):
        h = self._fc1(data)
        H = h.shape[1]
        _H, _W = int(np.ceil(np.sqrt(H))), int(np.ceil(np.sqrt(H)))
        add_length = _H * _W - H
        h = torch.cat([h, h[:, :add_length, :]], dim=1)
        cls_tokens = self.cls_token.expand(h.shape[0], -1, -1)
        h = torch.cat((cls_tokens, h), dim=1)
        h = self.layer1(h)
        h = self.pos_layer(h, _H, _W)
        h = self.layer2(h)
        h = self.norm(h)[:, 0]
        return self._fc2(h)


class RefModelInterface(nn.Module):
    """The Lightning module of the official code: the model is ``self.model``."""

    def __init__(self, **kwargs):
        super().__init__()
        self.model = RefTransMIL(**kwargs)


def _reference(release, n_classes=3, in_dim=24, dim=64, seed=0):
    torch.manual_seed(seed)
    ref = RefModelInterface(n_classes=n_classes, in_dim=in_dim, dim=dim, release=release).double()
    with torch.no_grad():  # biases, norms and convolutions all away from their initial values
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ref.eval()


def _lightning_ckpt(ref, path):
    torch.save({"epoch": 7, "global_step": 123, "pytorch-lightning_version": "1.2.3", "state_dict": ref.state_dict(),
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-4, "params": [0, 1]}]}],
                "lr_schedulers": []}, path)
    return path


# =========================================================================== faithfulness


@pytest.mark.parametrize("release", ["0.0.9", "0.0.10+"])
def test_converted_model_gives_the_official_outputs_on_a_padded_batch(tmp_path, release):
    ref = _reference(release)
    src = _lightning_ckpt(ref, tmp_path / "epoch=07-val_loss=0.4000.ckpt")
    out = milzoo.convert("transmil", src, tmp_path / "hub", class_names=["a", "b", "c"],
                         options={"nystrom_attention": release})
    model = milzoo.load_pretrained(str(out))
    from milzoo.checkpoint import read_config

    cfg = read_config(out)
    assert cfg["converted_from"]["wrapper"] == "state_dict" and cfg["converted_from"]["prefixes_removed"] == ["model."]
    p = model.pooling.config
    assert (p.hidden_dim, p.heads, p.dim_head, p.num_landmarks, p.residual_kernel, p.ppeg_kernels) == \
        (64, 8, 8, 32, 33, [7, 5, 3])
    assert p.nystrom_padding == ("keep" if release == "0.0.9" else "strip")
    gen = torch.Generator().manual_seed(1)
    # 5 instances: 10 tokens, 22 rows of padding (more than the tokens); 30: 37 tokens, 27 rows; 70: 82 tokens, 14
    xs = [torch.randn(n, 24, generator=gen, dtype=torch.float64) for n in (5, 30, 70)]
    got = model.predict(collate_bags([Bag(x, 0) for x in xs]))
    with torch.no_grad():
        want = torch.cat([ref.model(x[None]) for x in xs])
    torch.testing.assert_close(got.bag_logits, want, rtol=1e-9, atol=1e-10)
    # the two releases compute different models: the same weights converted for the other one disagree
    wrong = milzoo.load_pretrained(str(milzoo.convert(
        "transmil", src, tmp_path / "wrong", options={"nystrom_attention": "0.0.10+" if release == "0.0.9" else "0.0.9"})))
    for i, x in enumerate(xs):
        assert not torch.allclose(wrong.predict(collate_bags([Bag(x, 0)])).bag_logits, want[i:i + 1], atol=1e-6)


def test_official_sizes_in_float32(tmp_path):
    """1024 -> 512, 8 heads of 64, 256 landmarks: the official model as it is, one bag, from a safetensors file."""
    torch.manual_seed(3)
    ref = RefModelInterface(n_classes=2).eval()
    save_file({k: v.contiguous() for k, v in ref.model.state_dict().items()}, str(tmp_path / "transmil.safetensors"))
    model = milzoo.load_pretrained(str(milzoo.convert("transmil", tmp_path / "transmil.safetensors",
                                                      tmp_path / "hub")))
    assert model.pooling.config.num_landmarks == 256 and model.pooling.config.dim_head == 64
    x = torch.randn(300, 1024)
    with torch.no_grad():
        want = ref.model(x[None])
    torch.testing.assert_close(model.predict(collate_bags([Bag(x, 0)])).bag_logits, want, rtol=1e-4, atol=1e-5)


# =========================================================================== refusals and the command


def test_a_lightning_checkpoint_with_pickled_objects_is_refused_with_the_way_out(tmp_path):
    ref = _reference("0.0.9")
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": ref.state_dict(), "hyper_parameters": {"model": types.SimpleNamespace(n_classes=3)}},
               path)
    with pytest.raises(ConversionError, match=r"weights_only=True.*addict.*torch.save\(ckpt\['state_dict'\]"):
        milzoo.convert("transmil", path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_keys_and_shapes_are_checked_by_name(tmp_path):
    state = {k: v for k, v in _reference("0.0.9").model.state_dict().items()}
    broken = dict(state)
    del broken["layer2.attn.to_out.0.bias"]
    broken["layer3.norm.weight"] = torch.ones(64, dtype=torch.float64)
    torch.save(broken, tmp_path / "keys.pt")
    with pytest.raises(ConversionError, match=r"missing 'layer2.attn.to_out.0.bias'; unexpected 'layer3.norm.weight'"):
        milzoo.convert("transmil", tmp_path / "keys.pt", tmp_path / "out")
    misshapen = dict(state)
    misshapen["cls_token"] = torch.zeros(1, 1, 32, dtype=torch.float64)
    torch.save(misshapen, tmp_path / "shape.pt")
    with pytest.raises(ConversionError, match=r"'cls_token' is \(1, 1, 32\), needs \(1, 1, 64\)"):
        milzoo.convert("transmil", tmp_path / "shape.pt", tmp_path / "out")
    with pytest.raises(ConversionError, match="no '_fc1.0.weight'"):
        milzoo.convert("transmil", _save({"x": torch.zeros(1)}, tmp_path / "x.pt"), tmp_path / "out")


def _save(state, path):
    torch.save(state, path)
    return path


def test_the_command_converts_and_says_which_release_it_assumed(tmp_path):
    from milzoo.cli import add_all_commands, cli

    add_all_commands()
    src = _lightning_ckpt(_reference("0.0.10+", n_classes=2), tmp_path / "last.ckpt")
    result = CliRunner().invoke(cli, ["convert", "transmil", str(src), str(tmp_path / "hub"), "--class-names",
                                      "normal,tumor"])
    assert result.exit_code == 0, result.output
    assert "Assumed nystrom-attention 0.0.9" in result.output and "--option nystrom_attention=0.0.10+" in result.output
    result = CliRunner().invoke(cli, ["convert", "transmil", str(src), str(tmp_path / "hub"), "--overwrite",
                                      "-o", "nystrom_attention=0.0.10+", "-o", "pinv_iterations=8"])
    assert result.exit_code == 0, result.output
    model = milzoo.load_pretrained(str(tmp_path / "hub"))
    assert model.pooling.config.nystrom_padding == "strip" and model.pooling.config.pinv_iterations == 8
    result = CliRunner().invoke(cli, ["convert", "transmil", str(src), str(tmp_path / "x"), "-o", "nystrom=0.0.9"])
    assert result.exit_code == 2 and "nystrom_attention" in result.output and "Traceback" not in result.output


def test_keeping_the_padding_rows_passes_the_contract():
    from milzoo.testing import check_pooling
    from milzoo_transmil.pooling import TransMILPooling

    check_pooling(TransMILPooling, {**TransMILPooling.contract_options, "nystrom_padding": "keep"})
