"""Readers for the on-disk formats of FMNIST, SVHN, CIFAR-10 and CIFAR-100.

Each ``load_*`` returns an :class:`ImageSplits` with uint8 images ``[N, C, H, W]``.
We read the files ourselves (idx, pickle batches, .mat) instead of through
torchvision's dataset classes because those verify MD5 sums, which rejects
re-packed copies and the small generated files of the tests; torchvision is only
used to *download* (``download = true``), into the layout these readers search.

Search order (the first directory holding every needed file wins):

- FMNIST: with ``root``: ``root``, ``root/FashionMNIST/raw`` (torchvision's layout),
  ``root/fashion-mnist``.  Without ``root``: ``/usr/share/datasets/fashion-mnist``
  (Debian/Ubuntu package ``dataset-fashion-mnist``), then the same three under the
  default data directory.  Files may be raw idx or ``.gz``.
- CIFAR-10: ``root/cifar-10-batches-py``, ``root``.  CIFAR-100: ``root/cifar-100-python``, ``root``.
- SVHN: ``root``, ``root/svhn`` (``train_32x32.mat``, ``test_32x32.mat``; needs scipy).

The default data directory is ``$MILZOO_DATA_DIR`` when set, else ``~/.cache/milzoo/datasets``.

Downloads (``download = true``, or ``milzoo data fetch fmnist|svhn|cifar10|cifar100`` ahead of time) go through
:func:`milzoo.components.downloading`: offline, a run stops with one paragraph naming the fetch command.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from milzoo.components.download import downloading, fetch_command
from milzoo.errors import DataError

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")

FMNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
SVHN_CLASSES = [str(i) for i in range(10)]


@dataclass
class ImageSplits:
    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: np.ndarray  # int64 [N]
    test_x: torch.Tensor
    test_y: np.ndarray
    class_names: list[str]
    location: str  # where the files were found


def default_data_root() -> Path:
    env = os.environ.get("MILZOO_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "milzoo" / "datasets"


def _base(root: str | Path | None) -> Path:
    """The folder a dataset is searched in and downloaded into: the recipe's ``root``, else the default."""
    return Path(root).expanduser() if root else default_data_root()


def _missing(dataset: str, searched: list[Path], files: list[str], root_option: str, extra: str = "",
             fetch: str = "", root: str | Path | None = None) -> DataError:
    where = ", ".join(str(p) for p in searched)
    ahead = f" (offline machine: run `{fetch_command(fetch, root)}` on one with a network and copy the folder)" \
        if fetch else ""
    return DataError(
        f"{dataset} files ({', '.join(files)}) were not found in {where}. "
        f"Set `download = true` in the [data] section to download them with torchvision into {root_option}"
        f"{ahead}, or point `root` at a directory that holds them{extra}."
    )


def _find_dir(dirs: list[Path], files: list[str], allow_gz: bool = False) -> tuple[Path, list[Path]] | None:
    for d in dirs:
        found = []
        for name in files:
            cands = [d / name] + ([d / (name + ".gz")] if allow_gz else [])
            hit = next((p for p in cands if p.is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return d, found
    return None


# --------------------------------------------------------------------------- idx (FMNIST)
def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (raw or gzip) of unsigned bytes: the MNIST/Fashion-MNIST format."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc}); the file is damaged, delete it and get it again.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic number).")
    if raw[2] != 0x08:
        raise DataError(f"{path} holds idx type 0x{raw[2]:02x}; only unsigned-byte (0x08) files are supported.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(dims)) if dims else 0
    if len(raw) - header != count:
        raise DataError(f"{path} is truncated: expected {count} values after the header, got {len(raw) - header}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


FMNIST_FILES = [
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
]


def _fmnist_dirs(base: Path) -> list[Path]:
    return [base, base / "FashionMNIST" / "raw", base / "fashion-mnist"]


def fetch_fmnist(root: str | Path | None = None) -> Path:
    """Download Fashion-MNIST with torchvision into ``root`` (default: the data directory); the folder found."""
    base = _base(root)
    with downloading("Fashion-MNIST", "fmnist", base, root):
        import torchvision

        base.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(base), train=train, download=True)
    hit = _find_dir(_fmnist_dirs(base), FMNIST_FILES, allow_gz=True)
    if hit is None:
        raise _missing("Fashion-MNIST", _fmnist_dirs(base), FMNIST_FILES, str(base), fetch="fmnist", root=root)
    return hit[0]


def load_fmnist(root: str | None, download: bool) -> ImageSplits:
    base = _base(root)
    dirs = ([] if root else [DEBIAN_FMNIST]) + _fmnist_dirs(base)
    hit = _find_dir(dirs, FMNIST_FILES, allow_gz=True)
    if hit is None and download:
        fetch_fmnist(root)
        hit = _find_dir(dirs, FMNIST_FILES, allow_gz=True)
    if hit is None:
        raise _missing(
            "Fashion-MNIST", dirs, FMNIST_FILES, str(base),
            " (raw idx or .gz), or install the Debian package `dataset-fashion-mnist`", fetch="fmnist", root=root,
        )
    d, (tr_x, tr_y, te_x, te_y) = hit
    arrays = [read_idx(p) for p in (tr_x, tr_y, te_x, te_y)]
    for imgs, labels, name in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "t10k")):
        if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
            raise DataError(f"Fashion-MNIST {name} files in {d} disagree: images {imgs.shape}, labels {labels.shape}.")
    return ImageSplits(
        train_x=torch.from_numpy(arrays[0].copy()).unsqueeze(1),
        train_y=arrays[1].astype(np.int64),
        test_x=torch.from_numpy(arrays[2].copy()).unsqueeze(1),
        test_y=arrays[3].astype(np.int64),
        class_names=list(FMNIST_CLASSES),
        location=str(d),
    )


# --------------------------------------------------------------------------- CIFAR pickles
def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="latin1")
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read CIFAR batch {path} ({type(exc).__name__}: {exc}).") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR python batch (expected a dict).")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batches(paths: list[Path], label_key: str) -> tuple[torch.Tensor, np.ndarray]:
    xs, ys = [], []
    for p in paths:
        entry = _read_pickle(p)
        if "data" not in entry or label_key not in entry:
            raise DataError(f"{p} lacks the 'data' or {label_key!r} entry of a CIFAR python batch.")
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry[label_key], dtype=np.int64))
        if len(xs[-1]) != len(ys[-1]):
            raise DataError(f"{p} has {len(xs[-1])} images but {len(ys[-1])} labels.")
    return torch.from_numpy(np.concatenate(xs)), np.concatenate(ys)


def _cifar_layout(which: int) -> tuple[str, list[str], list[str], str, str, str]:
    """``(folder, train files, test files, meta file, label key, names key)`` of CIFAR-10 or CIFAR-100."""
    if which == 10:
        return ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "labels", "label_names")
    return "cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"


def fetch_cifar(root: str | Path | None = None, which: int = 10) -> Path:
    """Download CIFAR-``which`` (python version) with torchvision into ``root``; the folder found."""
    base = _base(root)
    sub, train_files, test_files = _cifar_layout(which)[:3]
    with downloading(f"CIFAR-{which}", f"cifar{which}", base, root):
        import torchvision

        cls = torchvision.datasets.CIFAR10 if which == 10 else torchvision.datasets.CIFAR100
        base.mkdir(parents=True, exist_ok=True)
        cls(str(base), train=True, download=True)
    hit = _find_dir([base / sub, base], train_files + test_files)
    if hit is None:
        raise _missing(f"CIFAR-{which}", [base / sub, base], train_files + test_files, str(base),
                       fetch=f"cifar{which}", root=root)
    return hit[0]


def load_cifar(root: str | None, download: bool, which: int) -> ImageSplits:
    base = _base(root)
    sub, train_files, test_files, meta, label_key, names_key = _cifar_layout(which)
    files = train_files + test_files
    dirs = [base / sub, base]
    hit = _find_dir(dirs, files)
    if hit is None and download:
        fetch_cifar(root, which)
        hit = _find_dir(dirs, files)
    if hit is None:
        raise _missing(f"CIFAR-{which}", dirs, files, str(base), f" (the extracted python version, {sub}/)",
                       fetch=f"cifar{which}", root=root)
    d, paths = hit
    tr_x, tr_y = _cifar_batches(paths[: len(train_files)], label_key)
    te_x, te_y = _cifar_batches(paths[len(train_files):], label_key)
    k = 10 if which == 10 else 100
    names = list(CIFAR10_CLASSES) if which == 10 else [str(i) for i in range(k)]
    if (d / meta).is_file():
        got = _read_pickle(d / meta).get(names_key)
        if got is not None and len(got) == k:
            names = [str(n) for n in got]
    return ImageSplits(tr_x, tr_y, te_x, te_y, names, str(d))


# --------------------------------------------------------------------------- SVHN .mat
SVHN_FILES = ["train_32x32.mat", "test_32x32.mat"]


def _read_svhn_mat(path: Path) -> tuple[torch.Tensor, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read SVHN file {path} ({type(exc).__name__}: {exc}).") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the 'X' or 'y' array of an SVHN cropped-digits file.")
    x = np.asarray(mat["X"], dtype=np.uint8)  # [32, 32, 3, N]
    y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[3] != len(y):
        raise DataError(f"{path}: X has shape {x.shape} but there are {len(y)} labels.")
    y = np.where(y == 10, 0, y)  # the files label digit 0 as 10
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), y


def _need_scipy() -> None:
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        raise DataError(
            "SVHN comes as MATLAB .mat files, which need scipy: `pip install scipy` (or `milzoo-vision[svhn]`)."
        ) from None


def fetch_svhn(root: str | Path | None = None) -> Path:
    """Download SVHN (cropped digits, train and test) with torchvision into ``root``; the folder found."""
    _need_scipy()
    base = _base(root)
    with downloading("SVHN", "svhn", base, root):
        import torchvision

        base.mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):
            torchvision.datasets.SVHN(str(base), split=split, download=True)
    hit = _find_dir([base, base / "svhn"], SVHN_FILES)
    if hit is None:
        raise _missing("SVHN", [base, base / "svhn"], SVHN_FILES, str(base), fetch="svhn", root=root)
    return hit[0]


def load_svhn(root: str | None, download: bool) -> ImageSplits:
    _need_scipy()
    base = _base(root)
    dirs = [base, base / "svhn"]
    hit = _find_dir(dirs, SVHN_FILES)
    if hit is None and download:
        fetch_svhn(root)
        hit = _find_dir(dirs, SVHN_FILES)
    if hit is None:
        raise _missing("SVHN", dirs, SVHN_FILES, str(base), fetch="svhn", root=root)
    d, (tr, te) = hit
    tr_x, tr_y = _read_svhn_mat(tr)
    te_x, te_y = _read_svhn_mat(te)
    return ImageSplits(tr_x, tr_y, te_x, te_y, list(SVHN_CLASSES), str(d))
