"""Tests of the image encoders (cnn2, resnet18)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from milzoo import registry
from milzoo.errors import ComponentError, DownloadError
from milzoo_vision.encoders import CNN2Encoder, ResNet18Encoder, resolve_normalization


def cnn2(in_shape=(1, 28, 28), **opts):
    return CNN2Encoder(CNN2Encoder.Config(**opts), in_shape)


def resnet(in_shape=(3, 32, 32), **opts):
    return ResNet18Encoder(ResNet18Encoder.Config(**opts), in_shape)


def test_registered_through_the_entry_point():
    assert registry.get_component("encoder", "cnn2") is CNN2Encoder
    assert registry.get_component("encoder", "resnet18") is ResNet18Encoder
    assert registry.get_entry("encoder", "cnn2").distribution == "milzoo-vision"


# --------------------------------------------------------------------------- cnn2
def test_cnn2_layers_and_shapes():
    enc = cnn2()
    assert enc.out_dim == 512
    assert enc.fc.in_features == 9216  # the classic MNIST net: 64 * 12 * 12
    convs = [m for m in enc.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (3, 3)), (32, 64, (3, 3))]
    assert any(isinstance(m, nn.Dropout2d) and m.p == 0.25 for m in enc.features)
    out = enc(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 512)
    assert bool((out >= 0).all())  # ends in ReLU
    rgb = cnn2((3, 32, 32), dim=64)
    assert rgb.fc.in_features == 64 * 14 * 14
    assert rgb(torch.rand(2, 3, 32, 32)).shape == (2, 64)


def test_cnn2_eval_is_deterministic_and_train_uses_dropout():
    torch.manual_seed(0)
    enc = cnn2()
    x = torch.rand(4, 1, 28, 28)
    enc.eval()
    torch.testing.assert_close(enc(x), enc(x))
    enc.train()
    assert not torch.equal(enc(x), enc(x))


def test_cnn2_rejects_bad_shapes():
    with pytest.raises(ComponentError, match=r"\(C, H, W\)"):
        cnn2((784,))
    with pytest.raises(ComponentError, match="6x6"):
        cnn2((1, 5, 5))


def test_normalisation_happens_first():
    torch.manual_seed(1)
    a = cnn2(normalize={"mean": [0.25], "std": [0.5]}).eval()
    b = cnn2(normalize="none").eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(a(x), b((x - 0.25) / 0.5))


def test_normalisation_presets():
    mean, std = resolve_normalization("auto", 1)
    assert mean.flatten().tolist() == pytest.approx([0.2860]) and std.flatten().tolist() == pytest.approx([0.3530])
    mean, _ = resolve_normalization("auto", 3)
    assert mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    mean, _ = resolve_normalization("half", 3)  # one value broadcast to every channel
    assert mean.shape == (1, 3, 1, 1)
    with pytest.raises(ComponentError, match="3 channels"):
        resolve_normalization(CNN2Encoder.Config(normalize={"mean": [0.1, 0.2], "std": [1.0, 1.0]}).normalize, 3)
    with pytest.raises(ValidationError):
        CNN2Encoder.Config(normalize="nonsense")
    # normalisation is derived from the config: not part of the saved weights
    assert not any(k.startswith("norm_") for k in cnn2().state_dict())


# --------------------------------------------------------------------------- resnet18
def test_resnet18_shapes_and_identity_head():
    enc = resnet()
    assert enc.out_dim == 512
    assert isinstance(enc.net.fc, nn.Identity)
    assert enc(torch.rand(3, 3, 32, 32)).shape == (3, 512)
    grey = resnet((1, 28, 28))
    assert grey.net.conv1.in_channels == 1
    assert grey(torch.rand(2, 1, 28, 28)).shape == (2, 512)


def test_resnet18_small_input_stem():
    enc = resnet(small_input=True)
    assert enc.net.conv1.kernel_size == (3, 3) and enc.net.conv1.stride == (1, 1)
    assert isinstance(enc.net.maxpool, nn.Identity)
    seen = {}
    enc.net.layer4.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    enc(torch.rand(2, 3, 32, 32))
    assert seen["shape"][-2:] == (4, 4)  # 32 / 8, versus 1x1 with the ImageNet stem


def test_resnet18_resize_on_the_batch():
    enc = resnet(resize=64)
    seen = {}
    enc.net.conv1.register_forward_hook(lambda m, i, o: seen.update(shape=i[0].shape))
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    assert seen["shape"] == (2, 3, 64, 64)


def test_resnet18_weights_path_and_grey_conversion(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    src = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    enc = resnet(weights_path=str(path))
    torch.testing.assert_close(enc.net.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
    torch.testing.assert_close(enc.net.conv1.weight, src.conv1.weight)
    grey = resnet((1, 28, 28), weights_path=str(path))
    torch.testing.assert_close(grey.net.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    small = resnet(small_input=True, weights_path=str(path))  # new stem, the rest pretrained
    torch.testing.assert_close(small.net.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    with pytest.raises(ComponentError, match="does not exist"):
        resnet(weights_path=str(tmp_path / "missing.pth"))


def test_resnet18_freeze_bn():
    enc = resnet(freeze_bn=True).train()
    bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert enc.training
    before = bns[0].running_mean.clone()
    enc(torch.rand(2, 3, 32, 32))
    assert torch.equal(before, bns[0].running_mean)


# --------------------------------------------------------------------------- channels_last, bf16, gradients
@pytest.mark.parametrize("make,shape", [(cnn2, (1, 28, 28)), (resnet, (3, 32, 32))])
def test_channels_last_matches_contiguous(make, shape):
    torch.manual_seed(2)
    enc = make(shape).eval()
    x = torch.rand(4, *shape)
    a = enc(x)
    b = enc(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    enc_cl = enc.to(memory_format=torch.channels_last)
    torch.testing.assert_close(enc_cl(x.contiguous(memory_format=torch.channels_last)), a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("make,shape", [(cnn2, (1, 28, 28)), (resnet, (3, 32, 32))])
def test_bf16_autocast_on_cpu(make, shape):
    torch.manual_seed(3)
    enc = make(shape).eval()
    x = torch.rand(4, *shape).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = enc(x)
    assert out.shape == ref.shape
    assert out.dtype == torch.bfloat16
    assert bool(torch.isfinite(out.float()).all())
    rel = (out.float() - ref).norm() / ref.norm()
    assert float(rel) < 0.05


@pytest.mark.parametrize("make,shape", [(cnn2, (1, 28, 28)), (resnet, (3, 32, 32))])
def test_gradients_reach_every_parameter(make, shape):
    torch.manual_seed(4)
    enc = make(shape).train()
    enc(torch.rand(3, *shape)).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


def test_resnet18_pretrained_loads_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """pretrained = true goes through torchvision's weights API, which reads $TORCH_HOME/hub/checkpoints when
    the file is there (a locally saved state dict here: the test downloads nothing)."""
    import torch.hub
    from torchvision.models import ResNet18_Weights, resnet18

    torch.manual_seed(1)
    src = resnet18(weights=None)
    name = Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(src.state_dict(), cache / name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # follow TORCH_HOME even if set_dir was called
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("tried to download the weights"))
    enc = resnet(pretrained=True)
    torch.testing.assert_close(enc.net.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    (cache / name).unlink()
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DownloadError, match=r"`milzoo data fetch resnet18-imagenet`") as err:
        resnet(pretrained=True)
    assert str(cache) in str(err.value)  # where the fetch puts it: the torch hub cache of TORCH_HOME


@pytest.mark.cuda
def test_resnet18_channels_last_bf16_on_cuda():
    enc = resnet(small_input=True).cuda().train()
    x = torch.rand(8, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = enc(x)
    assert out.shape == (8, 512) and out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert enc.net.conv1.weight.grad is not None
