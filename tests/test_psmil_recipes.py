"""The PSMIL benchmark recipes (recipes/psmil_*.toml, recipes/psmil/): they validate, carry the paper's
settings, build and bind, and small-data versions of a representative subset run end to end."""

from __future__ import annotations

import gzip
import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from milzoo.model.build import build_losses, build_model
from milzoo.recipe import load_recipe, read_toml

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("fmnist", "svhn", "cifar10", "cifar100")
MAIN = [ROOT / "recipes" / f"psmil_{d}.toml" for d in DATASETS]
ALL = MAIN + sorted((ROOT / "recipes" / "psmil").rglob("*.toml"))
ids = [str(p.relative_to(ROOT / "recipes")) for p in ALL]


def _generator():
    spec = importlib.util.spec_from_file_location("psmil_generate", ROOT / "recipes" / "psmil" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_recipes_are_up_to_date():
    gen = _generator()
    assert set(gen.files()) == set(ALL), "recipes/psmil holds files the generator does not write"
    assert gen.main(["--check"]) == 0, "run .venv/bin/python recipes/psmil/generate.py"


def test_recipe_set_is_complete():
    names = {p.relative_to(ROOT / "recipes" / "psmil").as_posix() for p in ALL[len(MAIN):]}
    for d in DATASETS:
        for m in ("abmil", "demil", "transmil", "dtfd", "supervised"):
            assert f"{d}/{m}.toml" in names
    for d in ("cifar10", "cifar100"):
        for m in ("abmil", "demil", "transmil", "dtfd"):
            assert f"{d}/{m}_frozen.toml" in names
    for d in ("fmnist", "cifar10", "cifar100"):
        for m in ("abmil_plus", "demil_plus", "abmil_pp", "demil_pp", "psmil_lam0", "psmil_lam001", "psmil_lam01"):
            assert f"{d}/{m}.toml" in names
    for m in ("abmil", "demil", "dtfd"):  # the PSMIL paper's own baselines (docs/results-psmil.md)
        assert f"fmnist/paper_{m}.toml" in names


@pytest.mark.parametrize("path", ALL, ids=ids)
def test_recipe_validates_with_the_papers_settings(path):
    r = load_recipe(path)
    root, d = r.root, r.to_dict()
    assert (root.optim.name, root.optim.momentum, root.optim.weight_decay) == ("sgd", 0.9, 1e-4)
    assert root.optim.lr in (0.01, 0.001)
    assert (root.schedule.name, root.schedule.milestones, root.schedule.gamma) == ("step", [10], 0.1)
    code = path.stem == "psmil_code"  # the authors' code: gradient norm clipped at 1 (docs/models/psmil.md)
    assert root.train.epochs == 20 and root.train.grad_clip == (1.0 if code else 5.0) and root.train.device == "auto"
    if path.parent.name == "fmnist":  # the reduced-scale protocol (docs/results-psmil.md): selection on val
        assert (d["data"]["max_bags_per_class"], d["data"]["val_fraction"]) == (60, 0.1)
        assert root.protocol.eval_splits == ["val_instances", "test_instances"]
    else:
        assert root.protocol.eval_splits[0] == "test_instances"  # the paper's metric comes first
    if code:
        assert (d["pooling"]["classifier"], d["pooling"]["onehot_mix"]) == ("kaiming_nobias", True)
        assert d["loss"][1]["ce_input"] == "probabilities"
    losses = [l.name for l in root.loss]
    enc = d["encoder"]
    if d["data"]["name"] != "fmnist_bags":
        assert d["data"]["download"] is True
        assert enc["name"] == "resnet18" and enc["pretrained"] is True and enc["resize"] == 224
    else:
        assert enc["name"] == "cnn2"
    frozen = root.train.freeze_encoder_epochs >= root.train.epochs
    if frozen:
        assert root.augment is None and enc["freeze_bn"] is True and "psali" not in losses
    if "psali" in losses:
        assert d["augment"]["name"] == "mil_views" and d["augment"]["num_views"] == 3
        assert root.pooling.name in ("psatt", "abmil", "demil")
    if d["data"].get("instance_bags"):
        assert root.pooling.name == "mean" and losses == ["bag_ce"]
    # FMNIST: the pooling view was chosen on validation (docs/results-psmil.md): unaugmented for the one-view
    # MIL recipes (the baselines and PSAtt without PSAli) and view 0 of the three-view (PSAli) recipes
    fmnist = d["data"]["name"] == "fmnist_bags"
    one_view_mil = (root.pooling.name in ("abmil", "demil", "transmil", "dtfd", "psatt") and "psali" not in losses
                    or d["data"].get("instance_bags", False))  # and the supervised ceiling, trained on the same view
    if fmnist and one_view_mil:
        assert (d["augment"]["num_views"], d["augment"]["flip"], d["augment"]["pad"]) == (1, False, 0)
    elif d.get("augment"):
        assert d["augment"].get("flip", True) and d["augment"].get("pad", 4) == 4
    if "psali" in losses:
        assert d["augment"].get("view0", "weak") == ("plain" if fmnist else "weak")
    if path.stem.startswith("paper_"):  # the paper's own baseline: the original row's training, another model
        original = load_recipe(path.parent / f"{path.stem[len('paper_'):]}.toml").to_dict()
        for section in ("data", "encoder", "augment", "optim", "schedule", "train", "protocol"):
            assert d[section] == original[section], section
        assert d["pooling"]["name"] == original["pooling"]["name"] and d["pooling"] != original["pooling"]
        assert d["pooling"].get("classifier", d["pooling"].get("tier1_classifier")) == "kaiming_nobias"
    if path.stem == "psmil_lam0":
        assert "psali" not in losses and root.pooling.name == "psatt" and root.train.freeze_encoder_epochs == 1
    if path.stem in ("psmil_lam001", "psmil_lam01"):
        psali = d["loss"][losses.index("psali")]
        assert psali["schedule"] == "constant" and psali["lam"] == (0.01 if path.stem.endswith("001") else 0.1)


def _tiny_dataset(shape, k, bags=4, n=8):
    from milzoo_vision.datasets import ImageBagDataset

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(64, *shape), dtype=np.uint8))
    index = np.stack([rng.choice(64, size=n, replace=False) for _ in range(bags)])
    return ImageBagDataset(images, index, rng.integers(0, k, size=index.shape), np.arange(bags) % k,
                           [str(c) for c in range(k)], "t-")


@pytest.mark.parametrize("path", ALL, ids=ids)
def test_recipe_builds_and_its_losses_bind(path):
    """Model + losses of every recipe (weights not downloaded, no resize) accept each other."""
    raw = read_toml(path)
    raw["encoder"].pop("resize", None)
    if raw["encoder"]["name"] == "resnet18":
        raw["encoder"].update(pretrained=False, small_input=True)
    r = load_recipe(raw)
    k = 100 if "cifar100" in path.as_posix() else 10
    shape = (1, 28, 28) if raw["data"]["name"] == "fmnist_bags" else (3, 32, 32)
    ds = _tiny_dataset(shape, k)
    torch.manual_seed(0)
    model = build_model(r, shape, k, ds.class_names)
    for loss in build_losses(r, model, k):
        loss.bind(model, ds)


# --------------------------------------------------------------------------- small-data runs

def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(str(path) + ".gz", "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def _split(counts, shape, seed):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(c, i) for i, c in enumerate(counts)]).astype(np.uint8)
    rng.shuffle(y)
    return rng.integers(0, 256, size=(len(y), *shape), dtype=np.uint8), y


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    tr_x, tr_y = _split([40] + [8] * 9, (28, 28), 0)
    te_x, te_y = _split([3] * 10, (28, 28), 1)
    for name, arr in [("train-images-idx3-ubyte", tr_x), ("train-labels-idx1-ubyte", tr_y),
                      ("t10k-images-idx3-ubyte", te_x), ("t10k-labels-idx1-ubyte", te_y)]:
        _write_idx(root / name, arr)
    return root


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("cifar")
    d = base / "cifar-10-batches-py"
    d.mkdir()
    tr_x, tr_y = _split([40] + [8] * 9, (3, 32, 32), 2)
    te_x, te_y = _split([3] * 10, (3, 32, 32), 3)
    chunks = np.array_split(np.arange(len(tr_y)), 5)
    for i, c in enumerate(chunks, 1):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": tr_x[c].reshape(len(c), -1),
                                                          b"labels": tr_y[c].tolist()}))
    (d / "test_batch").write_bytes(pickle.dumps({b"data": te_x.reshape(len(te_y), -1), b"labels": te_y.tolist()}))
    return base


SMALL = ["data.max_bags_per_class=2", "data.bag_size=8", "data.num_key=2", "train.epochs=1",
         "train.progress=false", "train.threads=1", "train.precision=fp32", "train.eval_batch_size=16"]


def _run(path: str, root: Path, out: Path, extra=(), epochs=1):
    from milzoo.runs.runner import run

    raw = read_toml(ROOT / path)
    raw["encoder"].pop("resize", None)
    if raw["encoder"]["name"] == "resnet18":  # no download in tests: random weights, 32-px input (cheap)
        raw["encoder"]["pretrained"] = False
    raw["data"]["download"] = False
    if raw["data"]["name"] == "fmnist_bags":
        raw["encoder"]["dim"] = 16
    if raw["pooling"]["name"] == "transmil":  # tiny transformer
        raw["pooling"].update(hidden_dim=16, heads=2, dim_head=8, num_landmarks=4)
    over = SMALL + [f"data.root={json.dumps(str(root))}", f"train.epochs={epochs}", *extra]
    summary = run(raw, out=out, overrides=over, progress=False)
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, recs


@pytest.mark.parametrize("path,epochs", [
    ("recipes/psmil_fmnist.toml", 2),          # PSMIL: frozen epoch 0, then PSAli on
    ("recipes/psmil/fmnist/abmil_pp.toml", 1),  # PSAli composed with ABMIL
    ("recipes/psmil/fmnist/dtfd.toml", 1),
    ("recipes/psmil/fmnist/transmil.toml", 1),
    ("recipes/psmil/fmnist/psmil_lam0.toml", 1),
    ("recipes/psmil/fmnist/paper_abmil.toml", 1),
    ("recipes/psmil/fmnist/paper_demil.toml", 1),
    ("recipes/psmil/fmnist/paper_dtfd.toml", 1),
])
def test_small_fmnist_runs(path, epochs, fmnist_root, tmp_path):
    summary, recs = _run(path, fmnist_root, tmp_path / "run", epochs=epochs)
    train = [r for r in recs if r["split"] == "train"]
    inst = [r for r in recs if r["split"] == "test_instances"]
    assert len(train) == epochs and len(inst) == epochs
    assert all(np.isfinite(r["loss"]) for r in train)
    assert 0.0 <= inst[-1]["acc"] <= 1.0
    assert summary["last"]["test_instances"]["acc"]["values"] == [inst[-1]["acc"]]
    if "psali" in read_toml(ROOT / path).get("loss", [{}])[-1].get("name", ""):
        assert train[-1]["lambda_T"] == pytest.approx(0.01 * (epochs - 1))


def test_small_fmnist_supervised_trains_on_single_images(fmnist_root, tmp_path):
    summary, recs = _run("recipes/psmil/fmnist/supervised.toml", fmnist_root, tmp_path / "run",
                         extra=["data.max_bags_per_class=8", "train.batch_size=16"])
    assert [r["split"] for r in recs] == ["train", "val_instances", "test_instances"]


def test_supervised_ceiling_sees_exactly_the_images_of_the_training_bags(fmnist_root):
    """instance_bags = the distinct images of the bags the MIL recipes build (same seed, caps, val split)."""
    from milzoo.registry import get_component

    cls = get_component("dataset", "fmnist_bags")
    opts = dict(root=str(fmnist_root), bag_size=8, num_key=2, max_bags_per_class=2, val_fraction=0.2)
    mil = cls(cls.Config(**opts)).load()
    sup = cls(cls.Config(**opts, instance_bags=True)).load()
    bag_images = np.unique(mil["train"].index)
    assert np.array_equal(sup["train"].index[:, 0], bag_images)
    assert np.array_equal(sup["train"].labels, sup["train"].inst_labels[:, 0])
    uncapped = cls(cls.Config(**{**opts, "max_bags_per_class": None}, instance_bags=True)).load()
    assert len(bag_images) < len(uncapped["train"])  # capped bags hold only some of the images
    assert not set(bag_images) & set(mil["val_instances"].index[:, 0])  # validation images stay out
    # uncapped (every class's images divisible into key groups) the set is every non-validation image
    full = cls(cls.Config(root=str(fmnist_root), bag_size=8, num_key=2, instance_bags=True)).load()
    assert len(full["train"]) == 40 + 8 * 9


def test_small_cifar10_psmil_and_frozen_baseline(cifar_root, tmp_path):
    _run("recipes/psmil_cifar10.toml", cifar_root, tmp_path / "psmil",
         extra=["augment.randaugment=false"])
    _, recs = _run("recipes/psmil/cifar10/abmil_frozen.toml", cifar_root, tmp_path / "frozen")
    assert recs[0]["split"] == "train"
    # the frozen encoder did not move: compare with the same seeded initialisation the trainer built
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "frozen" / "fold-00" / "last" / "model.safetensors"))
    raw = read_toml(ROOT / "recipes/psmil/cifar10/abmil_frozen.toml")
    raw["encoder"].pop("resize")
    raw["encoder"]["pretrained"] = False
    torch.manual_seed(0)
    fresh = build_model(load_recipe(raw), (3, 32, 32), 10).state_dict()
    enc = [k for k in saved if k.startswith("encoder.")]
    assert enc and all(torch.equal(saved[k], fresh[k]) for k in enc)
    assert not all(torch.equal(saved[k], fresh[k]) for k in saved if k.startswith("pooling."))
