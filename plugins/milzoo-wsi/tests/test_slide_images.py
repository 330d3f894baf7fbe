"""Heatmaps over slide images (OpenSlide / tiffslide), GeoJSON for QuPath, patch sizes from h5 attributes."""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pytest
from PIL import Image

from milzoo.errors import DataError
from milzoo_wsi import slide_images
from milzoo_wsi.geojson import dumps, patch_features
from milzoo_wsi.localization import draw_heatmap, patch_size_of, slide_image_for

READERS = [pytest.param(name, marks=pytest.mark.skipif(slide_images._reader_module(name) is None,
                                                        reason=f"{name} is not installed (milzoo-wsi[slides])"))
           for name in slide_images.READERS]


def write_pyramid_tiff(path, image: np.ndarray, factors=(4, 16)) -> str:
    """A small tiled, pyramidal RGB TIFF (level 0 plus reduced levels), as scanners' generic TIFFs are."""
    tifffile = pytest.importorskip("tifffile")
    with tifffile.TiffWriter(str(path)) as tw:
        tw.write(image, tile=(256, 256), photometric="rgb", subifds=0, resolution=(20000.0, 20000.0),
                 resolutionunit="CENTIMETER")  # 0.5 µm per pixel
        for f in factors:
            # 256-pixel tiles on every level (libtiff in OpenSlide refuses some smaller tilings that tifffile writes)
            tw.write(np.ascontiguousarray(image[::f, ::f]), tile=(256, 256), photometric="rgb", subfiletype=1)
    return str(path)


def _half_red_slide(tmp_path, w=2048, h=1024):
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (200, 30, 30)
    return write_pyramid_tiff(tmp_path / "slide_a.tiff", img)


# --------------------------------------------------------------------------- finding and reading slide images


def test_find_slide_image_by_id_with_or_without_extension(tmp_path):
    for name in ("tumor_001.tif", "tumor_002.svs", "tumor_002.h5", "sub/normal_003.ome.tiff", "sub/tumor_0011.tif",
                 ".hidden/tumor_004.svs", "other_005.txt", "tumor_006.isyntax"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    find = slide_images.find_slide_image
    assert find(tmp_path, "tumor_001").endswith("tumor_001.tif")
    assert find(tmp_path, "tumor_001.tif").endswith("tumor_001.tif")  # the id carries the extension
    assert find(tmp_path, "tumor_001.svs").endswith("tumor_001.tif")  # another extension of the same slide
    assert find(tmp_path, "tumor_002").endswith("tumor_002.svs")  # never the feature file
    assert find(tmp_path, "normal_003").endswith("sub/normal_003.ome.tiff")  # sub-folders, two-part suffix
    assert find(tmp_path, "tumor_001") != find(tmp_path, "tumor_0011")  # no prefix matches
    assert find(tmp_path, "tumor_006").endswith("tumor_006.isyntax")  # an unknown extension still matches
    assert find(tmp_path, "tumor_004") is None and find(tmp_path, "other_005") is None
    with pytest.raises(DataError, match="not a folder"):
        find(tmp_path / "nope", "x")


@pytest.mark.parametrize("reader", READERS)
def test_read_thumbnail_of_a_pyramidal_tiff(tmp_path, reader):
    img = np.zeros((1024, 2048, 3), np.uint8)
    img[:, :1024] = (250, 250, 250)
    img[:, 1024:] = (20, 60, 200)
    path = write_pyramid_tiff(tmp_path / "s.tiff", img)
    t = slide_images.read_thumbnail(path, max_size=256, reader=reader)
    assert t.reader == reader and t.dimensions == (2048, 1024)
    assert t.image.shape == (128, 256, 3) and t.image.dtype == np.uint8
    np.testing.assert_allclose(t.image[64, 10], (250, 250, 250), atol=3)
    np.testing.assert_allclose(t.image[64, 250], (20, 60, 200), atol=3)
    assert t.extent == (0.0, 2048.0, 1024.0, 0.0)
    assert t.mpp == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(DataError, match="cannot open the slide image"):
        (tmp_path / "bad.tiff").write_bytes(b"not a tiff")
        slide_images.read_thumbnail(tmp_path / "bad.tiff", reader=reader)


def test_without_a_reader_the_grid_stays_and_a_note_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(slide_images, "available_reader", lambda: None)
    path, note = slide_image_for(str(tmp_path), "slide_a")
    assert path is None and 'pip install "milzoo-wsi[slides]"' in note
    assert "openslide-python" in note and "tiffslide" in note
    with pytest.raises(DataError, match="no slide reader is installed"):
        slide_images.read_thumbnail(tmp_path / "x.tiff")
    assert slide_image_for(None, "slide_a") == (None, None)


# --------------------------------------------------------------------------- drawing over the slide


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _near(rgb, colour, tol=6):
    return (np.abs(rgb - np.asarray(colour)).max(-1) <= tol)


@pytest.mark.skipif(slide_images.available_reader() is None, reason="no slide reader (milzoo-wsi[slides])")
def test_heatmap_over_the_slide_is_aligned_with_the_patches(tmp_path):
    """Patches cover the left half of a red slide: the overlay fills the left half, the slide shows on the right."""
    slide = _half_red_slide(tmp_path)
    xs, ys = np.meshgrid(np.arange(0, 1024, 256), np.arange(0, 1024, 256))
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    values = np.full(len(coords), 0.5)  # one value: the lowest colour of the map everywhere
    out = tmp_path / "over.png"
    assert draw_heatmap(coords, values, str(out), patch_size=256, slide=slide) == slide
    rgb = _pixels(out)
    import matplotlib

    low = np.asarray(matplotlib.colormaps["viridis"](0.0)[:3]) * 255
    blend = 0.6 * low + 0.4 * np.array([200, 30, 30])  # the overlay, 60% opaque, over the red slide
    red, over = _near(rgb, (200, 30, 30)), _near(rgb, blend)
    assert red.sum() > 1000 and over.sum() > 1000
    ry, rx = np.nonzero(red)
    oy, ox = np.nonzero(over)
    assert ox.max() < rx.min() + 3  # the overlay is left of the slide's uncovered half ...
    assert abs((ox.max() - ox.min()) - (rx.max() - rx.min())) <= 4  # ... and as wide: both are half the slide
    assert abs(oy.min() - ry.min()) <= 2 and abs(oy.max() - ry.max()) <= 2  # the same rows
    # without the slide: the patch grid, white where there is no patch, no red
    grid = tmp_path / "grid.png"
    assert draw_heatmap(coords, values, str(grid), patch_size=256) is None
    assert not _near(_pixels(grid), (200, 30, 30)).any()


def test_no_patch_is_white_not_a_colour_of_the_map(tmp_path):
    import matplotlib

    from milzoo.report.common import NO_PATCH_COLOR, VALUE_CMAP

    assert VALUE_CMAP == "viridis" and NO_PATCH_COLOR == "#ffffff"
    cmap = matplotlib.colormaps[VALUE_CMAP]
    on_map = np.asarray(cmap(np.linspace(0, 1, 256)))[:, :3] * 255
    assert np.abs(on_map - 255).max(-1).min() > 20  # white is far from every colour of the map
    coords = np.array([[0, 0], [512, 0], [0, 512]])  # (256, 256) has no patch
    out = tmp_path / "h.png"
    draw_heatmap(coords, [0.0, 0.5, 1.0], str(out), patch_size=256)
    rgb = _pixels(out)
    rgb = rgb[:, : int(0.8 * rgb.shape[1])]  # the slide's axes, without the colour bar on the right
    mid_y, mid_x = np.nonzero(_near(rgb, np.asarray(cmap(0.5)[:3]) * 255, 3))
    assert len(mid_y) > 100  # the middle value is drawn in the map's middle colour
    low_y, low_x = np.nonzero(_near(rgb, np.asarray(cmap(0.0)[:3]) * 255, 3))
    # the empty cell between them (x = 256) is white, as is the empty one below the middle value
    row, col = int(np.median(low_y)), (low_x.max() + mid_x.min()) // 2
    assert tuple(rgb[row, col]) == (255, 255, 255)
    assert tuple(rgb[mid_y.max() + 20, int(np.median(mid_x))]) == (255, 255, 255)


# --------------------------------------------------------------------------- GeoJSON


def test_geojson_one_polygon_per_patch_with_measurements():
    coords = np.array([[0, 0], [256, 512]])
    fc = patch_features(coords, 256, {"attention": [0.25, np.nan], "score_tumor": [0.1, 0.9]},
                        color_by="attention", slide_id="s1")
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 2
    f0, f1 = fc["features"]
    assert f0["type"] == "Feature" and f0["geometry"]["type"] == "Polygon"
    assert f1["geometry"]["coordinates"] == [[[256.0, 512.0], [512.0, 512.0], [512.0, 768.0], [256.0, 768.0],
                                              [256.0, 512.0]]]
    assert f0["properties"]["objectType"] == "detection" and f0["properties"]["name"] == "patch 0"
    assert f0["properties"]["measurements"] == {"attention": 0.25, "score_tumor": 0.1}
    assert f1["properties"]["measurements"] == {"score_tumor": 0.9}  # NaN is left out, never written
    assert len(f0["properties"]["color"]) == 3 and "color" not in f1["properties"]
    assert json.loads(dumps(fc)) == fc
    assert patch_features(coords, 256, {}, object_type="annotation")["features"][0]["properties"]["objectType"] \
        == "annotation"
    with pytest.raises(ValueError, match="object_type"):
        patch_features(coords, 256, {}, object_type="cell")
    with pytest.raises(ValueError, match="2 patches"):
        patch_features(coords, 256, {"a": [1.0]})
    with pytest.raises(ValueError, match="patch_size"):
        patch_features(coords, 0, {})


# --------------------------------------------------------------------------- patch size from the h5 attributes


def _h5(path, attrs: dict, on="coords"):
    with h5py.File(path, "w") as f:
        f["features"] = np.zeros((2, 3), np.float32)
        f["coords"] = np.array([[0, 0], [1024, 0]])
        target = f["coords"] if on == "coords" else f
        for k, v in attrs.items():
            target.attrs[k] = v
    return str(path)


def test_patch_size_from_trident_and_clam_attributes(tmp_path):
    from milzoo_wsi.stores import slide_file

    class DS:
        def __init__(self, path):
            self.records = [type("R", (), {"file": slide_file(path)})()]

    trident = _h5(tmp_path / "t.h5", {"patch_size": 256, "patch_size_level0": 512, "target_magnification": 20,
                                      "level0_magnification": 40})
    clam = _h5(tmp_path / "c.h5", {"patch_size": 256, "patch_level": 1, "downsample": np.array([4.0, 4.0])})
    level0 = _h5(tmp_path / "l.h5", {"patch_size": 224, "patch_level": 0}, on="root")
    nothing = _h5(tmp_path / "n.h5", {})
    assert patch_size_of(DS(trident), 0) == 512
    assert patch_size_of(DS(clam), 0) == 1024
    assert patch_size_of(DS(level0), 0) == 224
    assert patch_size_of(DS(nothing), 0) is None
    assert patch_size_of([1, 2], 0) is None  # a dataset without records: the grid step is used


def test_png_is_a_real_image(tmp_path):
    out = tmp_path / "p.png"
    draw_heatmap(np.array([[0, 0], [256, 0]]), [1.0, 2.0], str(out), title="x" * 300)  # long titles wrap
    img = Image.open(io.BytesIO(out.read_bytes()))
    assert img.width < 1200
