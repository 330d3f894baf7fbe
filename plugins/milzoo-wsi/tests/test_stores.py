"""Feature stores (every format, local and memory://) and conversion to safetensors."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest
import torch

from milzoo.errors import DataError
from milzoo_wsi.convert import convert_features
from milzoo_wsi.stores import list_slide_files, probe_slide, read_slide, slide_file

EXTS = ["h5", "pt", "csv", "safetensors"]


def _roots(tmp_path, mem_root):
    return [str(tmp_path), mem_root]


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("where", ["local", "memory"])
def test_read_every_format(wr, tmp_path, mem_root, ext, where):
    root = str(tmp_path) if where == "local" else mem_root
    feats, coords = wr.feats(1, 7, 5)
    url = wr.slide(f"{root}/s1.{ext}", feats, None if ext == "csv" else coords)
    sf = slide_file(url)
    assert sf.slide_id == "s1" and sf.fmt == ext
    data = read_slide(sf, expected_dim=5)
    atol = 1e-6 if ext == "csv" else 0
    np.testing.assert_allclose(data.features.numpy(), feats, atol=atol, rtol=1e-6)
    if ext == "csv":
        assert data.coords is None
    else:
        assert data.coords.dtype == torch.int64
        np.testing.assert_array_equal(data.coords.numpy(), coords)
    info = probe_slide(sf)
    if ext == "pt" and where == "memory":  # no header without reading the whole remote file
        assert info.dim is None and info.n is None
        return
    assert info.dim == 5
    if ext != "csv":
        assert info.n == 7 and info.itemsize == 4 and info.has_coords


def test_h5_batched_and_pt_tensor_layouts(wr, tmp_path):
    feats, coords = wr.feats(2, 6, 3)
    h5 = read_slide(slide_file(wr.slide(f"{tmp_path}/a.h5", feats, coords, layout="batched")))
    assert h5.features.shape == (6, 3)
    pt = read_slide(slide_file(wr.slide(f"{tmp_path}/b.pt", feats, layout="tensor")))
    np.testing.assert_array_equal(pt.features.numpy(), feats)
    assert pt.coords is None
    assert probe_slide(slide_file(f"{tmp_path}/a.h5")).n == 6


@pytest.mark.parametrize(
    "header,mode,rows",
    [(None, "auto", 4), ("0,1,2", "auto", 4), ("f0,f1,f2", "auto", 4), (None, "yes", 3), ("0,1,2", "no", 5)],
)
def test_csv_header_detection(wr, tmp_path, header, mode, rows):
    feats, _ = wr.feats(3, 4, 3)
    url = wr.slide(f"{tmp_path}/c.csv", feats, header=header)
    data = read_slide(slide_file(url), csv_header=mode)
    assert data.features.shape == (rows, 3)
    if rows == 4:
        np.testing.assert_allclose(data.features.numpy(), feats, rtol=1e-6)


def test_list_slide_files(wr, tmp_path):
    f, c = wr.feats(0, 3, 2)
    wr.slide(f"{tmp_path}/h5_files/a.h5", f, c)
    wr.slide(f"{tmp_path}/pt_files/a.pt", f)  # CLAM layout: h5 preferred (it has coords)
    wr.slide(f"{tmp_path}/1-tumor/b.csv", f)
    wr.slide(f"{tmp_path}/c.safetensors", f, c)
    wr.slide(f"{tmp_path}/.d.safetensors", f, c)  # hidden: skipped
    (tmp_path / "notes.txt").write_text("x")
    files = list_slide_files(str(tmp_path))
    assert sorted(files) == ["a", "b", "c"]
    assert files["a"].fmt == "h5" and files["b"].fmt == "csv" and files["c"].fmt == "safetensors"
    assert sorted(list_slide_files(str(tmp_path), "pt")) == ["a"]
    assert sorted(list_slide_files(str(tmp_path), recursive=False)) == ["c"]
    wr.slide(f"{tmp_path}/other/a.h5", f, c)
    with pytest.raises(DataError, match="slide 'a' has several h5 files"):
        list_slide_files(str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        list_slide_files(str(tmp_path / "nope"))


@pytest.mark.parametrize("ext", EXTS)
def test_corrupted_file_names_slide_and_file(wr, tmp_path, ext):
    feats, coords = wr.feats(4, 20, 6)
    url = wr.slide(f"{tmp_path}/bad_slide.{ext}", feats, None if ext == "csv" else coords)
    raw = open(url, "rb").read()
    if ext == "csv":
        open(url, "wb").write(raw[: len(raw) // 2] + b"x,,\n")  # ragged, non-numeric row
    else:
        open(url, "wb").write(raw[: len(raw) // 2])  # truncated
    with pytest.raises(DataError) as err:
        read_slide(slide_file(url))
    msg = str(err.value)
    assert "'bad_slide'" in msg and "bad_slide." + ext in msg


def test_garbage_safetensors_header_is_reported(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"\xff" * 64)
    with pytest.raises(DataError, match="'junk'.*junk.safetensors"):
        probe_slide(slide_file(str(p)))


@pytest.mark.parametrize("ext", EXTS)
def test_dimension_mismatch(wr, mem_root, ext):
    feats, _ = wr.feats(5, 4, 7)
    url = wr.slide(f"{mem_root}/wide.{ext}", feats)
    with pytest.raises(DataError) as err:
        read_slide(slide_file(url), expected_dim=5, expected_from="from `feature_dim`")
    msg = str(err.value)
    assert "'wide'" in msg and "7 features" in msg and "5 were expected" in msg


def test_missing_key_nan_and_empty(wr, tmp_path):
    from safetensors.numpy import save_file

    save_file({"feats": np.zeros((2, 2), np.float32)}, str(tmp_path / "k.safetensors"))
    with pytest.raises(DataError, match="'k'.*no 'features'"):
        read_slide(slide_file(str(tmp_path / "k.safetensors")))
    feats, _ = wr.feats(6, 3, 2)
    feats[1, 1] = np.nan
    with pytest.raises(DataError, match="'n'.*1 non-finite"):
        read_slide(slide_file(wr.slide(f"{tmp_path}/n.h5", feats)))
    with pytest.raises(DataError, match="'e'.*no patches"):
        read_slide(slide_file(wr.slide(f"{tmp_path}/e.h5", np.zeros((0, 3), np.float32))))
    with pytest.raises(DataError, match="coords of shape"):
        read_slide(slide_file(wr.slide(f"{tmp_path}/c.h5", np.zeros((3, 2), np.float32), np.zeros((2, 2)))))


def test_file_gone_after_listing(wr, tmp_path):
    f, _ = wr.feats(0, 2, 2)
    sf = list_slide_files(str(wr.slide(f"{tmp_path}/g.h5", f).rsplit("/", 1)[0]))["g"]
    (tmp_path / "g.h5").unlink()
    with pytest.raises(DataError, match="'g'.*does not exist"):
        read_slide(sf)


# --------------------------------------------------------------------------- convert


@pytest.mark.parametrize("ext", ["h5", "pt", "csv"])
def test_convert_round_trip(wr, tmp_path, ext):
    src, dst = tmp_path / "src", tmp_path / "dst"
    originals = {}
    for i in range(3):
        feats, coords = wr.feats(10 + i, 5 + i, 4)
        feats *= 3.0
        wr.slide(f"{src}/s{i}.{ext}", feats, None if ext == "csv" else coords)
        originals[f"s{i}"] = (feats, coords)
    summary = convert_features(str(src), str(dst))
    assert sorted(summary.converted) == ["s0", "s1", "s2"] and summary.dim == 4 and not summary.failed
    assert summary.patches == 5 + 6 + 7
    files = list_slide_files(str(dst))
    assert sorted(files) == ["s0", "s1", "s2"] and all(f.fmt == "safetensors" for f in files.values())
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]  # no temp files left
    for sid, (feats, coords) in originals.items():
        data = read_slide(files[sid])
        assert data.features.dtype == torch.float16
        ref = torch.from_numpy(feats)
        if ext == "csv":
            ref = torch.from_numpy(np.loadtxt(f"{src}/{sid}.csv", delimiter=",", dtype=np.float32, ndmin=2))
        # exactly the fp16 rounding of the source, hence within fp16 tolerance of it
        assert torch.equal(data.features, ref.half())
        torch.testing.assert_close(data.features.float(), ref, rtol=1e-3, atol=1e-3)
        if ext != "csv":
            assert torch.equal(data.coords, torch.from_numpy(coords))
        else:
            assert data.coords is None
    # second run skips, overwrite redoes
    again = convert_features(str(src), str(dst))
    assert again.converted == [] and sorted(again.skipped) == ["s0", "s1", "s2"] and again.dim == 4
    assert len(convert_features(str(src), str(dst), overwrite=True).converted) == 3


def test_convert_memory_and_failures(wr, mem_root):
    src, dst = f"{mem_root}/src", f"{mem_root}/dst"
    f, c = wr.feats(1, 4, 3)
    wr.slide(f"{src}/ok.h5", f, c)
    wr.slide(f"{src}/big.h5", f * 1e6, c)  # overflows fp16
    wr.slide(f"{src}/wide.h5", wr.feats(2, 4, 5)[0], c)  # D=5, first slide sets D (sorted: big, ok, wide)
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"{src[len('memory://'):]}/broken.h5", b"not an hdf5 file")
    with pytest.raises(DataError) as err:
        convert_features(src, dst)
    msg = str(err.value)
    assert "'broken'" in msg and "'big'" in msg and "float32" in msg and "'wide'" in msg
    s = convert_features(src, dst, strict=False, overwrite=True)
    assert s.converted == ["ok"] and set(s.failed) == {"broken", "big", "wide"}
    s32 = convert_features(src, f"{mem_root}/dst32", dtype="float32", strict=False)
    assert sorted(s32.converted) == ["big", "ok"]
    data = read_slide(list_slide_files(f"{mem_root}/dst32")["big"])
    assert data.features.dtype == torch.float32
    torch.testing.assert_close(data.features, torch.from_numpy(f * 1e6))


def test_count_nonfinite():
    from milzoo_wsi.stores import count_nonfinite

    x = torch.ones(5, 3)
    assert count_nonfinite(x) == 0
    assert count_nonfinite(torch.full((4, 2), 3e38)) == 0  # the column sum overflows, the values do not
    x[1, 2], x[3, 0] = float("inf"), float("nan")
    assert count_nonfinite(x) == 2 and count_nonfinite(x.half()) == 2
