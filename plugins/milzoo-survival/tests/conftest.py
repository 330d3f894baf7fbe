from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(str(path) + ".gz", "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fake_fmnist(tmp_path_factory) -> Path:
    """A small Fashion-MNIST in idx format: 6,000 training and 4,000 test images of 10 classes; each image is
    its class's pattern plus noise (so an encoder can tell the key class apart)."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, size=(10, 28, 28))
    for prefix, n in (("train", 6000), ("t10k", 4000)):
        y = np.arange(n) % 10
        x = np.clip(patterns[y] + rng.normal(0, 40, size=(n, 28, 28)), 0, 255)
        _write_idx(root / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", y)
    return root
