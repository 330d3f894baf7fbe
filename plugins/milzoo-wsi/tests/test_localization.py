"""Localisation tables and heatmaps."""

from __future__ import annotations

import csv
import io

import fsspec
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from milzoo.datasets.batch import Bag, collate_bags
from milzoo.builtin.encoders import IdentityEncoder
from milzoo.builtin.poolings import MaxPooling, MeanPooling
from milzoo.components.base import ComponentConfig, Pooling
from milzoo.errors import ComponentError
from milzoo.layers.masking import masked_softmax
from milzoo.model.mil import MILModel
from milzoo.components.output import MILOutput
from milzoo_wsi.localization import draw_heatmap, heatmap_grid, localization_table, write_localization

PNG = b"\x89PNG\r\n\x1a\n"


class PerClassAttention(Pooling):
    """Test pooling: attention per class = softmax over instances of the first k features."""

    name = "test_per_class_attention"

    class Config(ComponentConfig):
        pass

    def forward(self, h, mask):
        a = masked_softmax(h[..., : self.num_classes], mask, dim=1)  # [B, N, k]
        logits = torch.einsum("bnk,bnd->bk", a, h)
        return MILOutput(bag_logits=logits, mask=mask, attention=a)


def _mean_model(d=3, names=("normal", "tumor")):
    model = MILModel(IdentityEncoder(IdentityEncoder.Config(), (d,)),
                     MeanPooling(MeanPooling.Config(), d, 2), class_names=list(names))
    with torch.no_grad():
        model.pooling.classifier.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0]]))
        model.pooling.classifier.bias.copy_(torch.tensor([0.5, -0.5]))
    return model


def _bag(n=5, d=3, sid="slide_7", coords=True):
    x = torch.arange(n * d, dtype=torch.float32).reshape(n, d) / 10 - 0.5
    c = torch.stack([torch.arange(n) % 3, torch.arange(n) // 3], 1).long() * 512 if coords else None
    return Bag(x=x, y=1, bag_id=sid, coords=c, meta={"slide_id": sid})


def test_table_matches_hand_computation():
    model, bag = _mean_model(), _bag()
    model.train()
    rows = localization_table(model, bag)
    assert model.training  # predict() restores the mode
    assert len(rows) == 5
    assert list(rows[0]) == ["slide_id", "patch", "x", "y", "attention", "score_normal", "score_tumor"]
    logits = torch.stack([bag.x[:, 0] + 0.5, 2 * bag.x[:, 1] - bag.x[:, 2] - 0.5], 1)
    probs = torch.softmax(logits, 1)
    for i, r in enumerate(rows):
        assert r["slide_id"] == "slide_7" and r["patch"] == i
        assert (r["x"], r["y"]) == (512 * (i % 3), 512 * (i // 3))
        assert r["attention"] == pytest.approx(0.2)  # mean pooling: 1/n
        assert r["score_normal"] == pytest.approx(float(probs[i, 0]), abs=1e-6)
        assert r["score_tumor"] == pytest.approx(float(probs[i, 1]), abs=1e-6)


def test_per_class_attention_columns_and_no_attention():
    pool = PerClassAttention(PerClassAttention.Config(), 3, 2)
    model = MILModel(IdentityEncoder(IdentityEncoder.Config(), (3,)), pool, class_names=["a b", "c"])
    bag = _bag(coords=False)
    rows = localization_table(model, bag)
    assert list(rows[0]) == ["slide_id", "patch", "x", "y", "attention_a_b", "attention_c"]
    expect = torch.softmax(bag.x[:, :2], dim=0)
    got = torch.tensor([[r["attention_a_b"], r["attention_c"]] for r in rows])
    torch.testing.assert_close(got, expect)
    assert rows[0]["x"] == ""
    maxm = MILModel(IdentityEncoder(IdentityEncoder.Config(), (3,)), MaxPooling(MaxPooling.Config(), 3, 2))
    assert "attention" not in localization_table(maxm, bag)[0]  # scores only


def test_write_localization_files(tmp_path):
    model = _mean_model()
    bags = [_bag(6, sid="a"), _bag(4, sid="b/c"), _bag(3, sid="nocoords", coords=False)]

    class DS:
        def __len__(self):
            return len(bags)

        def __getitem__(self, i):
            return bags[i]

    out = write_localization(model, DS(), str(tmp_path / "loc"))
    assert [s["slide_id"] for s in out] == ["a", "b/c", "nocoords"]
    assert out[2]["png"] is None
    for s, bag in zip(out[:2], bags):
        rows = list(csv.DictReader(open(s["csv"])))
        ref = localization_table(model, bag)
        assert len(rows) == len(bag)
        for r, e in zip(rows, ref):
            assert int(r["patch"]) == e["patch"] and int(r["x"]) == e["x"]
            assert float(r["score_tumor"]) == pytest.approx(e["score_tumor"], rel=1e-9)
        raw = open(s["png"], "rb").read()
        assert raw.startswith(PNG)
        img = imread(s["png"])
        assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert (tmp_path / "loc" / "b_c.csv").exists() and (tmp_path / "loc" / "nocoords.csv").exists()
    with torch.no_grad():
        p = model.predict(collate_bags([bags[0]])).bag_probs[0]
    assert out[0]["pred"] == int(p.argmax()) and out[0]["probs"] == pytest.approx(p.tolist())


def test_write_localization_memory_and_scores():
    model = MILModel(IdentityEncoder(IdentityEncoder.Config(), (3,)), MaxPooling(MaxPooling.Config(), 3, 2))
    out = write_localization(model, [_bag(5, sid="m")], "memory://loc-test", heatmap_class=1)
    fs = fsspec.filesystem("memory")
    assert fs.cat_file("/loc-test/m.png").startswith(PNG)
    text = fs.cat_file("/loc-test/m.csv").decode()
    assert next(csv.reader(io.StringIO(text)))[4:] == ["score_0", "score_1"]
    assert out[0]["png"] == "memory://loc-test/m.png"
    fs.rm("/loc-test", recursive=True)
    with pytest.raises(ComponentError, match="no attention"):
        write_localization(model, [_bag(5, sid="m")], "memory://loc-test2", heatmap_value="attention")


def test_draw_heatmap_grid_values(tmp_path):
    # cells follow the coordinates: x -> column, y -> row (row 0 on top); gaps are NaN
    coords = np.array([[0, 0], [256, 0], [0, 256], [256, 256], [768, 256], [768, 256]])
    img, (x0, y0, step) = heatmap_grid(coords, [0.1, 0.2, 0.3, 0.4, 0.5, 0.9])
    assert (x0, y0, step) == (0.0, 0.0, 256.0)
    np.testing.assert_array_equal(img, [[0.1, 0.2, np.nan, np.nan], [0.3, 0.4, np.nan, 0.9]])
    img2, (_, _, step2) = heatmap_grid(coords + 1000, [0, 0, 0, 0, 0, 0], patch_size=512)
    assert step2 == 512 and img2.shape == (1, 2)
    coords = coords[:4]
    png = tmp_path / "h.png"
    draw_heatmap(coords, [0.0, 1.0, 1.0, 0.0], str(png), title="t")
    img = imread(str(png))[..., :3]
    assert png.read_bytes().startswith(PNG) and img.shape[0] > 20
    # irregular coordinates, explicit patch size, huge sparse extent (coarsened)
    draw_heatmap(np.array([[3, 5], [1000003, 7], [50, 2000000]]), [1, 2, 3], str(tmp_path / "s.png"), patch_size=1)
    assert (tmp_path / "s.png").read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="coordinates for"):
        draw_heatmap(coords, [1.0], str(tmp_path / "x.png"))


def test_write_localization_decides_by_the_models_rule_and_writes_geojson(tmp_path):
    import json

    from milzoo.report.common import VALUE_CMAP

    model = _mean_model()
    bag = _bag(6, sid="a")
    with torch.no_grad():
        p1 = float(model.predict(collate_bags([bag])).bag_probs[0, 1])
    model.decision_threshold = p1 + 0.01 if p1 >= 0.5 else p1 - 0.01  # the recorded threshold flips the argmax
    (out,) = write_localization(model, [bag], str(tmp_path / "loc"))
    assert out["pred"] == int(p1 < 0.5) and out["decision"].rule == "threshold"
    assert out["decision"].text.startswith(f"predicted {model.class_names[out['pred']]} (p(tumor)={p1:.3f}")
    (argmax,) = write_localization(model, [bag], str(tmp_path / "loc2"), threshold=float("nan"))
    assert argmax["pred"] == out["pred"]  # a junk explicit threshold falls back to the model's own
    fc = json.loads(open(out["geojson"]).read())
    assert len(fc["features"]) == 6 and fc["milzoo"] == {"slide_id": "a", "patch_size_level0": 512.0}
    assert fc["features"][0]["properties"]["measurements"].keys() == {"attention", "score_normal", "score_tumor"}
    assert out["slide_image"] is None and out["note"] is None
    assert draw_heatmap.__kwdefaults__["cmap"] == VALUE_CMAP
