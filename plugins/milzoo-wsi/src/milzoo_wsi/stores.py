"""Per-slide patch-feature files, read through fsspec.

One file per slide; the slide id is the file name without its extension.
Every reader works on local paths, ``memory://`` and any other fsspec URL.

=============  ==============================  =========================================================
format         extensions                      content
=============  ==============================  =========================================================
``h5``         ``.h5``, ``.hdf5``              TRIDENT/CLAM: dataset ``features`` ``[n, D]`` (or
                                               ``[1, n, D]``), optional ``coords`` ``[n, 2]``
``pt``         ``.pt``, ``.pth``               ``torch.save`` of a tensor ``[n, D]`` or of a dict with
                                               ``features`` and optional ``coords``; loaded with
                                               ``weights_only=True`` (no pickled code runs)
``csv``        ``.csv``                        DSMIL: one row per patch, D float columns, no label
                                               column; an optional header row (pandas' ``0,1,...``
                                               column names included) is detected
``safetensors`` ``.safetensors``               ``features`` and optional ``coords``; local files are
                                               read through ``safe_open`` (memory-mapped)
=============  ==============================  =========================================================

Any format may also carry ``inst_labels`` ``[n]`` (patch labels, -1 unknown),
returned as :attr:`SlideData.inst_labels`; the synthetic generator writes them.

How the slide was patched (patch size, magnification, level) is read from the
attributes TRIDENT and CLAM write on the ``coords`` dataset of their h5 files
(:func:`patching_from_attrs`), from the ``patching`` metadata of safetensors
files that ``milzoo features convert`` wrote, and from scalar entries of a
``.pt`` dict; :attr:`SlideInfo.patching` holds it.

A slide table's ``slide_id`` may carry the whole-slide file's extension
(``TCGA-XX.svs``): :func:`slide_id_stem` drops it, and the ``slides`` dataset
matches either form to the feature file ``TCGA-XX.h5``.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from torch import Tensor

from milzoo.datasets.files import check_data_file, parse_numeric_csv, read_data_bytes
from milzoo.errors import DataError

#: the formats, in the order of preference when one slide id has files in several
FORMATS = ("safetensors", "h5", "pt", "csv")
EXTENSIONS = {
    ".safetensors": "safetensors",
    ".h5": "h5",
    ".hdf5": "h5",
    ".pt": "pt",
    ".pth": "pt",
    ".csv": "csv",
}
FormatName = Literal["auto", "h5", "pt", "csv", "safetensors"]
CsvHeader = Literal["auto", "yes", "no"]

FEATURES = "features"
COORDS = "coords"
INST_LABELS = "inst_labels"

#: extensions of whole-slide image files (and of the feature files themselves) that a slide table's
#: ``slide_id`` may carry: ``TCGA-XX.svs`` names the slide ``TCGA-XX`` (:func:`slide_id_stem`)
SLIDE_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm", ".czi",
    ".qptiff", ".isyntax", ".btf", ".jpg", ".jpeg", ".png", ".ome.tif", ".ome.tiff", *EXTENSIONS,
)

#: what :func:`patching_from_attrs` reports, in this order
PATCHING_KEYS = (
    "producer", "patch_size", "magnification", "patch_level", "downsample", "level0_magnification",
    "patch_size_level0", "overlap",
)

_ST_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8}


@dataclass(frozen=True)
class SlideFile:
    """Where one slide's features live."""

    slide_id: str
    url: str  # a plain path for local files, else the full fsspec URL
    fmt: str
    size: int | None = None  # bytes, when the listing knew it

    @property
    def local_path(self) -> str | None:
        return _local_path(self.url)


@dataclass
class SlideData:
    """The content of one slide file (features in their stored dtype)."""

    features: Tensor  # [n, D] floating
    coords: Tensor | None = None  # [n, 2] int64 or float32
    inst_labels: Tensor | None = None  # [n] long
    #: a patient's bag (``bag = "patient"``): the patch count of each of its slides, in order
    parts: tuple[int, ...] | None = None

    @property
    def num_patches(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


@dataclass(frozen=True)
class SlideInfo:
    """What a file's header tells without reading the features (None = unknown).

    ``patching``: how the slide was patched, when the file says so (see :func:`patching_from_attrs`).
    """

    n: int | None = None
    dim: int | None = None
    itemsize: int | None = None
    has_coords: bool | None = None
    has_inst_labels: bool | None = None
    patching: dict = field(default_factory=dict, compare=False)


# --------------------------------------------------------------------------- slide ids and patching


def slide_id_stem(slide_id: str) -> str:
    """``slide_id`` without a whole-slide (or feature) file extension: ``TCGA-XX.svs`` -> ``TCGA-XX``.

    The extensions are :data:`SLIDE_EXTENSIONS`, matched without regard to case (``.SVS``); an id
    without one is returned as it is.
    """
    low = slide_id.lower()
    for ext in sorted(SLIDE_EXTENSIONS, key=len, reverse=True):  # .ome.tiff before .tiff
        if low.endswith(ext) and len(slide_id) > len(ext):
            return slide_id[: -len(ext)]
    return slide_id


def _plain(v: Any) -> Any:
    """An attribute value as a JSON-able Python value (numpy scalars and arrays, bytes)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.reshape(-1)] if v.size != 1 else _plain(v.reshape(-1)[0])
    if isinstance(v, Tensor):
        return _plain(v.detach().cpu().numpy())
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _number(v: Any) -> float | int | None:
    """A positive (or zero) number from an attribute; a pair of equal numbers counts as one; else None."""
    v = _plain(v)
    if isinstance(v, list):
        if not v or any(x != v[0] for x in v):
            return None
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if not np.isfinite(v) or v < 0:  # TRIDENT writes -1 for "unknown"
        return None
    return int(v) if float(v).is_integer() else float(v)


def patching_from_attrs(attrs: Mapping[str, Any]) -> dict:
    """How a slide was patched, from the attributes of a TRIDENT or CLAM h5 file (or a dict of such keys).

    - TRIDENT writes on ``coords``: ``patch_size`` (pixels at the target magnification),
      ``target_magnification``, ``level0_magnification``, ``patch_size_level0``, ``overlap``.
    - CLAM writes on ``coords``: ``patch_size`` and ``patch_level`` (pixels at that pyramid level),
      ``downsample`` (the level's downsample, a pair), ``level_dim``, ``downsampled_level_dim``.

    Returns the keys of :data:`PATCHING_KEYS` that are known: ``producer`` (``"trident"`` or ``"clam"``),
    ``patch_size``, ``magnification`` (TRIDENT's ``target_magnification``), ``patch_level``, ``downsample``,
    ``level0_magnification``, ``patch_size_level0`` (the patch's side in level-0 pixels, the frame of the
    coordinates: given by TRIDENT, ``patch_size * downsample`` for CLAM, ``patch_size * level0 / target
    magnification`` otherwise) and ``overlap``.  Unknown values (absent, or TRIDENT's -1) are left out;
    an empty dict means the file says nothing.
    """
    a = {str(k): v for k, v in attrs.items()}
    out: dict = {}
    if isinstance(a.get("producer"), str) and a["producer"] in ("trident", "clam"):
        out["producer"] = a["producer"]
    elif "target_magnification" in a or "level0_magnification" in a or "patch_size_level0" in a:
        out["producer"] = "trident"
    elif "patch_level" in a:
        out["producer"] = "clam"
    for key, src in (("patch_size", ("patch_size",)), ("magnification", ("magnification", "target_magnification")),
                     ("patch_level", ("patch_level",)), ("downsample", ("downsample",)),
                     ("level0_magnification", ("level0_magnification",)),
                     ("patch_size_level0", ("patch_size_level0",)), ("overlap", ("overlap",))):
        for name in src:
            v = _number(a[name]) if name in a else None
            if v is not None:
                out[key] = v
                break
    if "patch_size_level0" not in out and "patch_size" in out:
        if "downsample" in out:
            size0 = out["patch_size"] * out["downsample"]
        elif out.get("magnification") and "level0_magnification" in out:
            size0 = out["patch_size"] * out["level0_magnification"] / out["magnification"]
        elif out.get("patch_level") == 0:
            size0 = out["patch_size"]
        else:
            size0 = None
        if size0 is not None:
            out["patch_size_level0"] = int(round(size0)) if abs(size0 - round(size0)) < 1e-6 else float(size0)
    return {k: out[k] for k in PATCHING_KEYS if k in out}


def _h5_patching(f) -> dict:
    """Patching attributes of an open h5 file: the file's, then ``features``', then ``coords``' (which win)."""
    attrs: dict = dict(f.attrs.items())
    for name in (FEATURES, COORDS):
        if name in f:
            attrs.update(f[name].attrs.items())
    return patching_from_attrs(attrs)


def _safetensors_patching(header: dict) -> dict:
    raw = (header.get("__metadata__") or {}).get("patching")
    if not raw:
        return {}
    try:
        return patching_from_attrs(json.loads(raw))
    except (ValueError, TypeError, AttributeError):
        return {}


# --------------------------------------------------------------------------- paths


def _local_path(url: str) -> str | None:
    if "://" not in url:
        return url
    if url.startswith("file://"):
        return url[len("file://") :]
    return None


def _url_to_fs(url: str):
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise DataError(f"cannot open {url}: {exc}. Install the fsspec backend for this URL or fix it.") from None


#: what a feature file is called in the errors of :mod:`milzoo.datasets.files`, and where its path comes from
_WHAT, _HINT = "feature file", "check `features` in the recipe, or remove the slide from the table"


def _checked(lp: str) -> str:
    """A local feature file, refused unless it is a regular file (``/dev/zero`` or a pipe would never end); a
    missing one is reported by :func:`read_slide`, naming the slide."""
    check_data_file(lp, _WHAT, _HINT, must_exist=False)
    return lp


@contextlib.contextmanager
def _open_binary(url: str) -> Iterator:
    lp = _local_path(url)
    if lp is not None:
        with open(_checked(lp), "rb") as fh:
            yield fh
    else:
        with fsspec.open(url, "rb") as fh:
            yield fh


def _read_bytes(url: str) -> bytes:
    """A whole feature file: a regular file that fits in memory (:func:`milzoo.datasets.files.read_data_bytes`)."""
    return read_data_bytes(url, _WHAT, _HINT)


def format_of(path: str) -> str | None:
    """The format an extension stands for, or None."""
    return EXTENSIONS.get(posixpath.splitext(path)[1].lower())


def slide_file(url: str, slide_id: str | None = None, fmt: str | None = None) -> SlideFile:
    """A :class:`SlideFile` for one path or URL (format from the extension unless given)."""
    name = posixpath.basename(url.rstrip("/"))
    fmt = fmt or format_of(name)
    if fmt not in FORMATS:
        raise DataError(f"cannot tell the feature format of {url}; name it ({', '.join(FORMATS)}).")
    return SlideFile(slide_id=slide_id or posixpath.splitext(name)[0], url=url, fmt=fmt)


def list_slide_files(root: str, fmt: FormatName | None = "auto", recursive: bool = True) -> dict[str, SlideFile]:
    """Map slide id -> :class:`SlideFile` for the feature files under ``root``.

    ``fmt="auto"`` (or None) takes every known extension; when a slide id has
    files in several formats the first of :data:`FORMATS` wins (safetensors, h5,
    pt, csv), so a CLAM folder with both ``h5_files/`` and ``pt_files/`` reads
    the h5 files (they carry coordinates).  Sub-folders are searched unless
    ``recursive=False`` (DSMIL keeps one folder per class); hidden files and
    folders (names starting with ``.``, e.g. unfinished conversions) are skipped.
    Two files of the chosen format with the same slide id are an error.
    """
    fmt = fmt or "auto"
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown feature format {fmt!r}; use auto, {', '.join(FORMATS)}.")
    fs, base = _url_to_fs(root)
    if not fs.isdir(base):
        raise DataError(f"the feature folder {root} does not exist or is not a folder; check `features`.")
    entries = fs.find(base, maxdepth=None if recursive else 1, detail=True)
    local = isinstance(fs, LocalFileSystem)
    found: dict[str, dict[str, list[tuple[str, int | None]]]] = {}
    prefix = base.rstrip("/") + "/"
    for path, info in entries.items():
        if info.get("type", "file") != "file":
            continue
        rel = path[len(prefix) :] if path.startswith(prefix) else posixpath.basename(path)
        if any(part.startswith(".") for part in rel.split("/")) or path.endswith(".tmp"):
            continue
        f = format_of(path)
        if f is None or (fmt != "auto" and f != fmt):
            continue
        sid = posixpath.splitext(posixpath.basename(path))[0]
        url = path if local else fs.unstrip_protocol(path)
        found.setdefault(sid, {}).setdefault(f, []).append((url, info.get("size")))
    out: dict[str, SlideFile] = {}
    for sid in sorted(found):
        by_fmt = found[sid]
        chosen = next(f for f in FORMATS if f in by_fmt)
        files = by_fmt[chosen]
        if len(files) > 1:
            paths = ", ".join(sorted(u for u, _ in files))
            raise DataError(
                f"slide {sid!r} has several {chosen} files under {root}: {paths}. Slide ids must be unique; "
                "remove the extra copies or point `features` at one folder."
            )
        url, size = files[0]
        out[sid] = SlideFile(slide_id=sid, url=url, fmt=chosen, size=size)
    return out


# --------------------------------------------------------------------------- errors


def _said(exc: BaseException) -> str:
    """What a library's error says, without the advice some append (torch: "re-run with weights_only=False",
    which would unpickle whatever the file holds): its first sentence."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text.split(". ")[0].rstrip(".") if "weights_only" in str(exc) or len(text) > 300 else text


def _corrupt(sf: SlideFile, exc: BaseException) -> DataError:
    return DataError(
        f"slide {sf.slide_id!r}: cannot read {sf.url} as a {sf.fmt} feature file "
        f"({type(exc).__name__}: {_said(exc)}). The file is corrupted or truncated, or not in the {sf.fmt} layout; "
        "re-extract or re-convert this slide, or remove it from the slide table."
    )


def check_dim(slide_id: str, found: int, expected: int | None, url: str, expected_from: str = "") -> None:
    """Raise :class:`DataError` when a slide's feature dimension is not the expected one."""
    if expected is None or found == expected:
        return
    why = f" ({expected_from})" if expected_from else ""
    raise DataError(
        f"slide {slide_id!r} has {found} features per patch but {expected} were expected{why}; "
        f"all slides of a set must come from the same feature extractor. Check {url}, or fix `feature_dim`."
    )


# --------------------------------------------------------------------------- readers


def count_nonfinite(x: Tensor) -> int:
    """Number of NaN/inf entries; a column sum first, since ``isfinite`` over fp16 is slow."""
    if bool(torch.isfinite(x.sum(dim=0, dtype=torch.float32)).all()):
        return 0
    return int((~torch.isfinite(x)).sum())  # NaN/inf present, or only a float32 overflow of the sum


def _as_tensor(a) -> Tensor:
    if isinstance(a, Tensor):
        return a
    return torch.from_numpy(np.ascontiguousarray(a))


def _finish(sf: SlideFile, feats, coords=None, inst=None) -> SlideData:
    """Check shapes and normalise dtypes of what a reader found."""
    x = _as_tensor(feats)
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2:
        raise DataError(
            f"slide {sf.slide_id!r}: {sf.url} holds features of shape {list(x.shape)}; "
            "expected [n_patches, D] (or [1, n_patches, D])."
        )
    if not x.is_floating_point():
        x = x.float()
    n = int(x.shape[0])
    if n == 0:
        raise DataError(f"slide {sf.slide_id!r}: {sf.url} has no patches; remove the slide from the table.")
    c = None
    if coords is not None:
        c = _as_tensor(coords)
        if c.dim() == 3 and c.shape[0] == 1:
            c = c[0]
        if c.dim() != 2 or c.shape[1] < 2 or c.shape[0] != n:
            raise DataError(
                f"slide {sf.slide_id!r}: {sf.url} has coords of shape {list(c.shape)} for {n} patches; "
                f"expected [{n}, 2]."
            )
        c = c[:, :2]
        c = c.float() if c.is_floating_point() else c.long()
        c = c.contiguous()
    y = None
    if inst is not None:
        y = _as_tensor(inst).reshape(-1).long()
        if y.shape[0] != n:
            raise DataError(f"slide {sf.slide_id!r}: {sf.url} has {y.shape[0]} inst_labels for {n} patches.")
    return SlideData(features=x.contiguous(), coords=c, inst_labels=y)


def _missing_key(sf: SlideFile, keys) -> DataError:
    return DataError(
        f"slide {sf.slide_id!r}: {sf.url} has no {FEATURES!r} entry (it has: {', '.join(sorted(map(str, keys))) or 'nothing'}); "
        f"a {sf.fmt} feature file needs {FEATURES!r} [n, D] and optionally {COORDS!r} [n, 2]."
    )


def _read_safetensors(sf: SlideFile, csv_header: str) -> SlideData:
    lp = sf.local_path
    if lp is not None:
        from safetensors import safe_open

        with safe_open(_checked(lp), framework="pt") as f:
            keys = set(f.keys())
            if FEATURES not in keys:
                raise _missing_key(sf, keys)
            got = {k: f.get_tensor(k) for k in (FEATURES, COORDS, INST_LABELS) if k in keys}
    else:
        from safetensors.torch import load

        got = load(_read_bytes(sf.url))
        if FEATURES not in got:
            raise _missing_key(sf, got.keys())
    return _finish(sf, got[FEATURES], got.get(COORDS), got.get(INST_LABELS))


@contextlib.contextmanager
def _h5(sf: SlideFile):
    import h5py

    lp = sf.local_path
    if lp is not None:
        with h5py.File(_checked(lp), "r") as f:
            yield f
    else:
        with fsspec.open(sf.url, "rb") as fh, h5py.File(fh, "r") as f:
            yield f


def _read_h5(sf: SlideFile, csv_header: str) -> SlideData:
    with _h5(sf) as f:
        if FEATURES not in f:
            raise _missing_key(sf, f.keys())
        feats = f[FEATURES][()]
        coords = f[COORDS][()] if COORDS in f else None
        inst = f[INST_LABELS][()] if INST_LABELS in f else None
    return _finish(sf, feats, coords, inst)


def _torch_load(sf: SlideFile, mmap: bool):
    lp = sf.local_path
    if lp is not None:
        _checked(lp)
        if mmap:
            try:
                return torch.load(lp, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be mmapped; retry plainly
                pass
        return torch.load(lp, map_location="cpu", weights_only=True)
    return torch.load(io.BytesIO(_read_bytes(sf.url)), map_location="cpu", weights_only=True)


def _unpack_pt(sf: SlideFile, obj):
    if isinstance(obj, Tensor):
        return obj, None, None
    if isinstance(obj, dict):
        if FEATURES not in obj:
            raise _missing_key(sf, obj.keys())
        return obj[FEATURES], obj.get(COORDS), obj.get(INST_LABELS)
    raise DataError(
        f"slide {sf.slide_id!r}: {sf.url} holds a {type(obj).__name__}; a .pt feature file must hold a tensor "
        f"[n, D] or a dict with {FEATURES!r} (and optionally {COORDS!r})."
    )


def _read_pt(sf: SlideFile, csv_header: str) -> SlideData:
    return _finish(sf, *_unpack_pt(sf, _torch_load(sf, mmap=True)))


def _is_header(line: str) -> bool:
    toks = [t.strip().strip('"').strip("'") for t in line.split(",")]
    try:
        [float(t) for t in toks]
    except ValueError:
        return True
    # pandas writes the default column names 0,1,...,D-1 (DSMIL's compute_feats does)
    return len(toks) >= 2 and all(t.isdigit() for t in toks) and [int(t) for t in toks] == list(range(len(toks)))


def _split_csv_header(text: str, csv_header: str) -> tuple[str | None, str]:
    first, _, rest = text.lstrip("\ufeff").partition("\n")
    has = {"yes": True, "no": False}.get(csv_header)
    if has is None:
        has = _is_header(first)
    return (first, rest) if has else (None, text.lstrip("\ufeff"))


def _read_csv(sf: SlideFile, csv_header: str) -> SlideData:
    raw = _read_bytes(sf.url)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _corrupt(sf, exc) from None
    header, body = _split_csv_header(text, csv_header)
    if not body.strip():
        raise DataError(f"slide {sf.slide_id!r}: {sf.url} has no patches; remove the slide from the table.")
    arr = parse_numeric_csv(body, f"slide {sf.slide_id!r}: {sf.url}", dtype=np.float32,
                            first_line=1 if header is None else 2, layout=" of features (one patch per row)")
    return _finish(sf, arr)


_READERS = {"safetensors": _read_safetensors, "h5": _read_h5, "pt": _read_pt, "csv": _read_csv}


def read_slide(
    sf: SlideFile,
    expected_dim: int | None = None,
    *,
    expected_from: str = "",
    csv_header: CsvHeader = "auto",
    check_finite: bool = True,
) -> SlideData:
    """Read one slide's features (stored dtype) and coordinates.

    Raises :class:`DataError` naming the slide and the file when the file is
    gone, unreadable, of the wrong layout, of the wrong dimension
    (``expected_dim``) or holds NaN/inf features.
    """
    try:
        data = _READERS[sf.fmt](sf, csv_header)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(
            f"slide {sf.slide_id!r}: its feature file {sf.url} does not exist (any more); check `features`."
        ) from None
    except Exception as exc:  # noqa: BLE001 - every other failure means a bad file
        raise _corrupt(sf, exc) from None
    check_dim(sf.slide_id, data.dim, expected_dim, sf.url, expected_from)
    if check_finite:
        bad = count_nonfinite(data.features)
        if bad:
            raise DataError(
                f"slide {sf.slide_id!r}: {sf.url} has {bad} non-finite feature values (NaN or inf); "
                "re-extract this slide's features."
            )
    return data


# --------------------------------------------------------------------------- headers


def _safetensors_header(sf: SlideFile) -> dict:
    with _open_binary(sf.url) as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than a safetensors header")
        size = int.from_bytes(head, "little")
        if size <= 0 or size > 100_000_000:
            raise ValueError(f"implausible safetensors header size {size}")
        blob = fh.read(size)
    if len(blob) < size:
        raise ValueError("truncated safetensors header")
    return json.loads(blob)


def _shape_info(shape, itemsize, has_coords, has_inst, patching: dict | None = None) -> SlideInfo:
    shape = list(shape)
    patching = dict(patching or {})
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        return SlideInfo(has_coords=has_coords, has_inst_labels=has_inst, patching=patching)
    return SlideInfo(int(shape[0]), int(shape[1]), itemsize, has_coords, has_inst, patching)


def probe_slide(sf: SlideFile, csv_header: CsvHeader = "auto") -> SlideInfo:
    """Read what the header says (patches, dimension, item size) without loading the features.

    Cheap for safetensors and h5 (any URL) and for local ``.pt`` files
    (memory-mapped).  For CSV only the dimension is known (from the first data
    row); for remote ``.pt`` files nothing is (the whole file would have to be
    read).  Unreadable headers raise :class:`DataError`.
    """
    try:
        if sf.fmt == "safetensors":
            header = _safetensors_header(sf)
            if FEATURES not in header:
                raise _missing_key(sf, [k for k in header if k != "__metadata__"])
            ent = header[FEATURES]
            return _shape_info(ent["shape"], _ST_ITEMSIZE.get(ent["dtype"]), COORDS in header, INST_LABELS in header,
                               _safetensors_patching(header))
        if sf.fmt == "h5":
            with _h5(sf) as f:
                if FEATURES not in f:
                    raise _missing_key(sf, f.keys())
                ds = f[FEATURES]
                return _shape_info(ds.shape, ds.dtype.itemsize, COORDS in f, INST_LABELS in f, _h5_patching(f))
        if sf.fmt == "pt":
            if sf.local_path is None:
                return SlideInfo()
            obj = _torch_load(sf, mmap=True)
            feats, coords, inst = _unpack_pt(sf, obj)
            feats = _as_tensor(feats)
            patching = patching_from_attrs(
                {k: v for k, v in obj.items() if isinstance(k, str) and k not in (FEATURES, COORDS, INST_LABELS)}
            ) if isinstance(obj, dict) else {}
            return _shape_info(feats.shape, feats.element_size(), coords is not None, inst is not None, patching)
        if sf.fmt == "csv":
            with _open_binary(sf.url) as fh:
                lines = [fh.readline().decode("utf-8"), fh.readline().decode("utf-8")]
            _, body = _split_csv_header("".join(lines), csv_header)
            row = body.partition("\n")[0].strip()
            return SlideInfo(dim=len(row.split(",")) if row else None, itemsize=None, has_coords=False,
                             has_inst_labels=False)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"slide {sf.slide_id!r}: its feature file {sf.url} does not exist; check `features`.") from None
    except Exception as exc:  # noqa: BLE001
        raise _corrupt(sf, exc) from None
    raise DataError(f"unknown feature format {sf.fmt!r}")


def estimate_bytes(sf: SlideFile, info: SlideInfo, itemsize: int) -> int:
    """Bytes the slide's features take at ``itemsize`` (from the header, else from the file size).

    Without a header the estimate is deliberately on the high side: a ``.pt``
    file is taken to hold fp16 and a CSV about 4 characters per value.
    """
    if info.n is not None and info.dim is not None:
        return info.n * info.dim * itemsize
    size = sf.size
    if size is None:
        fs, path = _url_to_fs(sf.url)
        size = int(fs.size(path) or 0)
    if sf.fmt == "csv":
        return size // 4 * itemsize
    return size // 2 * itemsize
