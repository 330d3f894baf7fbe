"""Slide images: finding a slide's image file and reading a thumbnail of it (OpenSlide or tiffslide).

Heatmaps are drawn over the slide when a reader is installed: ``openslide-python`` with ``openslide-bin`` (the
OpenSlide library inside a wheel), or ``tiffslide`` (pure Python, TIFF-based formats: ``.svs``, ``.tif``,
generic pyramidal TIFF, ...).  ``pip install "milzoo-wsi[slides]"`` installs both.  Without either, the
heatmaps stay on the patch grid and a note says what to install.

Coordinates everywhere are level-0 pixels (the slide's full resolution, origin at its top-left corner), as
TRIDENT and CLAM store the patches' top-left corners.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from milzoo.errors import DataError

log = logging.getLogger(__name__)

#: the readers tried, in order
READERS = ("openslide", "tiffslide")
INSTALL_HINT = ('install a slide reader to draw heatmaps over the slide image: pip install "milzoo-wsi[slides]" '
                "(openslide-python with openslide-bin, and tiffslide)")
#: extensions of slide image files that the readers open (lower case)
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".svslide", ".bif",
                    ".qptiff", ".ome.tif", ".ome.tiff", ".dcm")
#: files that are never slide images (feature files, tables, outputs)
NOT_SLIDES = (".h5", ".hdf5", ".pt", ".pth", ".csv", ".safetensors", ".json", ".geojson", ".png", ".txt", ".tmp",
              ".xml", ".md")
#: largest side of the thumbnail drawn under a heatmap, in pixels
THUMBNAIL_SIZE = 2048


@lru_cache(maxsize=None)
def _reader_module(name: str):
    try:
        if name == "openslide":
            import openslide  # raises OSError without the OpenSlide library (openslide-bin)

            return openslide
        if name == "tiffslide":
            import tiffslide

            return tiffslide
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError when the C library is missing
        log.debug("slide reader %s unavailable: %s", name, exc)
    return None


def available_reader() -> str | None:
    """The first installed slide reader (``openslide``, then ``tiffslide``), or None."""
    for name in READERS:
        if _reader_module(name) is not None:
            return name
    return None


def _strip_known(name: str) -> str | None:
    low = name.lower()
    for ext in sorted(SLIDE_EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return None


def _file_stems(name: str) -> set[str]:
    """The slide ids a file name answers to: without a known slide extension (``x.ome.tiff`` -> ``x``), or
    without its last suffix (another format)."""
    out = set()
    known = _strip_known(name)
    if known:
        out.add(known)
    if "." in name.strip("."):
        out.add(name.rsplit(".", 1)[0])
    return out


def find_slide_image(slides_dir: str | os.PathLike, slide_id: str) -> str | None:
    """The image file of ``slide_id`` under ``slides_dir`` (searched recursively), or None.

    A file matches when its name is the slide id, or the slide id plus an extension (``tumor_001`` matches
    ``tumor_001.tif``); a slide id that ends in a slide extension also matches that name with another one
    (``tumor_001.tif`` matches ``tumor_001.svs``).  Files with a known slide extension win over others, then
    the shallowest path, then the shortest name.
    """
    root = Path(slides_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"--slides {root} is not a folder; give the folder that holds the slide images.")
    sid = str(slide_id)
    forms = {sid} | ({_strip_known(sid)} - {None})
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if fn.startswith(".") or fn.lower().endswith(NOT_SLIDES) or not (fn in forms or forms & _file_stems(fn)):
                continue
            p = Path(dirpath) / fn
            known = _strip_known(fn) is not None
            hits.append((not known, len(p.relative_to(root).parts), len(fn), str(p)))
    return min(hits)[3] if hits else None


@dataclass
class SlideThumbnail:
    """A slide's thumbnail and how it maps to level-0 pixels."""

    image: np.ndarray  # [h, w, 3] uint8 RGB
    dimensions: tuple[int, int]  # level-0 (width, height)
    path: str
    reader: str
    mpp: float | None = None  # microns per level-0 pixel, when the file says

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` in level-0 pixels, for matplotlib's ``imshow``."""
        w, h = self.dimensions
        return (0.0, float(w), float(h), 0.0)


def read_thumbnail(path: str | os.PathLike, max_size: int = THUMBNAIL_SIZE, reader: str | None = None) -> SlideThumbnail:
    """Read a thumbnail of the slide image ``path`` (largest side ``max_size`` pixels).

    ``reader``: ``openslide`` or ``tiffslide`` (default: the first installed).  Raises
    :class:`milzoo.errors.DataError` when no reader is installed or the file cannot be read.
    """
    name = reader or available_reader()
    mod = _reader_module(name) if name else None
    if mod is None:
        raise DataError(f"cannot read the slide image {path}: no slide reader is installed; {INSTALL_HINT}.")
    opener = mod.TiffSlide if name == "tiffslide" else mod.OpenSlide
    try:
        slide = opener(str(path))
    except Exception as exc:  # noqa: BLE001 - each reader has its own error classes
        raise DataError(f"cannot open the slide image {path} with {name}: {type(exc).__name__}: {exc}") from None
    try:
        w, h = (int(v) for v in slide.dimensions)
        scale = max_size / max(w, h, 1)
        size = (max(1, round(w * min(scale, 1.0))), max(1, round(h * min(scale, 1.0))))
        thumb = slide.get_thumbnail(size)
        image = np.asarray(thumb.convert("RGB"))
        mpp = None
        for key in ("openslide.mpp-x", "tiffslide.mpp-x"):
            try:
                value = slide.properties.get(key)
                mpp = float(value) if value not in (None, "") else mpp
            except (TypeError, ValueError):
                pass
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read a thumbnail of the slide image {path} with {name}: "
                        f"{type(exc).__name__}: {exc}") from None
    finally:
        try:
            slide.close()
        except Exception:  # noqa: BLE001
            pass
    return SlideThumbnail(image=image, dimensions=(w, h), path=str(path), reader=name, mpp=mpp)
