"""Writers of small slide files in every format (local paths or fsspec URLs)."""

from __future__ import annotations

import io
import uuid

import fsspec
import h5py
import numpy as np
import pytest
import torch


def write_slide(url: str, feats: np.ndarray, coords: np.ndarray | None = None, *, layout: str = "dict",
                header: str | None = None) -> str:
    """Write one slide file; the format follows the extension of ``url``."""
    ext = url.rsplit(".", 1)[-1]
    if ext in ("h5", "hdf5"):
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            f["features"] = feats[None] if layout == "batched" else feats
            if coords is not None:
                f["coords"] = coords
        blob = buf.getvalue()
    elif ext in ("pt", "pth"):
        buf = io.BytesIO()
        if layout == "tensor":
            torch.save(torch.from_numpy(feats), buf)
        else:
            obj = {"features": torch.from_numpy(feats)}
            if coords is not None:
                obj["coords"] = torch.from_numpy(coords)
            torch.save(obj, buf)
        blob = buf.getvalue()
    elif ext == "csv":
        buf = io.StringIO()
        if header is not None:
            buf.write(header + "\n")
        np.savetxt(buf, feats, fmt="%.7g", delimiter=",")
        blob = buf.getvalue().encode()
    elif ext == "safetensors":
        from safetensors.numpy import save

        d = {"features": np.ascontiguousarray(feats)}
        if coords is not None:
            d["coords"] = np.ascontiguousarray(coords)
        blob = save(d)
    else:
        raise ValueError(ext)
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, blob)
    return url


def make_feats(seed: int, n: int, d: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, d)).astype(dtype)
    coords = (np.stack([np.arange(n) % 4, np.arange(n) // 4], axis=1) * 256).astype(np.int64)
    return feats, coords


def write_table(url: str, rows: list[dict]) -> str:
    cols = list(rows[0].keys())
    text = ",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n" for r in rows)
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(path, text.encode())
    return url


@pytest.fixture
def mem_root():
    """A fresh ``memory://`` folder, removed afterwards."""
    root = f"memory://wsi-test-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    path = root[len("memory://"):]
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture
def wr():
    """The writers above, as a fixture (test modules cannot import conftest under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(slide=write_slide, feats=make_feats, table=write_table)
