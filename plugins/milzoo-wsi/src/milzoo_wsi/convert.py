"""Convert a folder of slide feature files to one fp16 ``.safetensors`` per slide."""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Literal

import torch
from fsspec.implementations.local import LocalFileSystem

from milzoo.errors import DataError
from milzoo_wsi.stores import (
    COORDS,
    FEATURES,
    INST_LABELS,
    CsvHeader,
    FormatName,
    _url_to_fs,
    count_nonfinite,
    list_slide_files,
    probe_slide,
    read_slide,
    slide_file,
)

_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class ConvertSummary:
    """What :func:`convert_features` did."""

    src: str
    dst: str
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already converted
    failed: dict[str, str] = field(default_factory=dict)  # slide id -> error message
    dim: int | None = None
    patches: int = 0  # patches written

    def to_dict(self) -> dict:
        return {
            "src": self.src, "dst": self.dst, "converted": len(self.converted), "skipped": len(self.skipped),
            "failed": dict(self.failed), "dim": self.dim, "patches": self.patches,
        }

    def __str__(self) -> str:
        s = (f"{len(self.converted)} slides converted, {len(self.skipped)} already there, "
             f"{len(self.failed)} failed ({self.src} -> {self.dst})")
        return s


def _patching_of(sf) -> dict:
    """How the source slide was patched (its h5 attributes, ...); {} when unknown or unreadable."""
    if sf.fmt == "csv":
        return {}
    try:
        return dict(probe_slide(sf).patching)
    except DataError:
        return {}


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def convert_features(
    src_dir_or_url: str,
    dst_dir: str,
    fmt: FormatName | None = None,
    dtype: Literal["float16", "float32"] = "float16",
    overwrite: bool = False,
    *,
    csv_header: CsvHeader = "auto",
    strict: bool = True,
) -> ConvertSummary:
    """Write one ``<slide_id>.safetensors`` per slide of ``src_dir_or_url`` into ``dst_dir``.

    Backs ``milzoo features convert SRC DST``.  The source is any folder the
    ``slides`` dataset reads (h5, pt, csv or safetensors; ``fmt`` None/"auto"
    detects it from the extensions, sub-folders included); both sides may be
    fsspec URLs.  Each output holds ``features`` (``dtype``, fp16 by default),
    ``coords`` when the source has them (int64, or float32 when fractional)
    and ``inst_labels`` when present, with the slide id and source in the
    safetensors metadata, and how the slide was patched (the TRIDENT/CLAM h5
    attributes: patch size, magnification, level) as ``patching`` (JSON).

    Each file is written to a hidden temporary name in ``dst_dir`` and renamed
    when complete, so an interrupted run never leaves a half-written slide;
    slides whose output exists are skipped unless ``overwrite``.  All slides
    must share one feature dimension (the first slide read sets it).
    Values that overflow fp16 fail the slide (use ``dtype="float32"``).

    A slide that cannot be converted does not stop the others; at the end,
    with ``strict`` (default) a :class:`~milzoo.errors.DataError` lists every
    failure, otherwise the failures are in the returned summary.
    """
    if dtype not in _DTYPES:
        raise DataError(f"dtype must be float16 or float32, not {dtype!r}")
    target = _DTYPES[dtype]
    files = list_slide_files(src_dir_or_url, fmt or "auto")
    if not files:
        raise DataError(
            f"no slide feature files (.h5, .pt, .csv, .safetensors) found under {src_dir_or_url}"
            + (f" in format {fmt}" if fmt not in (None, "auto") else "") + "."
        )
    fs, dst_root = _url_to_fs(dst_dir)
    fs.makedirs(dst_root, exist_ok=True)
    local = isinstance(fs, LocalFileSystem)
    summary = ConvertSummary(src=src_dir_or_url, dst=dst_dir)
    expected: int | None = None
    expected_from = ""

    from safetensors.torch import save

    for sid, sf in files.items():
        out_path = _join(dst_root, f"{sid}.safetensors")
        if not overwrite and fs.exists(out_path):
            summary.skipped.append(sid)
            if expected is None:  # the existing outputs fix the dimension too
                try:
                    info = probe_slide(slide_file(out_path if local else fs.unstrip_protocol(out_path), sid))
                    expected, expected_from = info.dim, f"as in the already converted slide {sid!r}"
                except DataError:
                    pass
            continue
        try:
            data = read_slide(sf, expected, expected_from=expected_from, csv_header=csv_header)
        except DataError as exc:
            summary.failed[sid] = str(exc)
            continue
        if expected is None:
            expected, expected_from = data.dim, f"as in the first slide {sid!r}"
        feats = data.features.to(target)
        if feats.dtype != data.features.dtype and count_nonfinite(feats):
            summary.failed[sid] = (
                f"slide {sid!r}: values of {sf.url} overflow {dtype} (largest |x| = "
                f"{float(data.features.abs().max()):.4g}); convert with dtype='float32'."
            )
            continue
        tensors = {FEATURES: feats.contiguous()}
        if data.coords is not None:
            c = data.coords
            if c.is_floating_point() and bool((c == c.round()).all()):
                c = c.long()
            tensors[COORDS] = c.contiguous()
        if data.inst_labels is not None:
            tensors[INST_LABELS] = data.inst_labels.contiguous()
        metadata = {"slide_id": sid, "source": sf.url, "source_format": sf.fmt,
                    "producer": "milzoo-wsi convert_features"}
        patching = _patching_of(sf)
        if patching:  # the TRIDENT/CLAM attributes (patch size, magnification, level) travel with the features
            metadata["patching"] = json.dumps(patching)
        blob = save(tensors, metadata=metadata)
        tmp = _join(dst_root, f".{sid}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            if local:
                with open(tmp, "wb") as fh:
                    fh.write(blob)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, out_path)
            else:
                fs.pipe_file(tmp, blob)
                if fs.exists(out_path):
                    fs.rm(out_path)
                fs.mv(tmp, out_path)
        except Exception as exc:  # noqa: BLE001
            try:
                if fs.exists(tmp):
                    fs.rm(tmp)
            except Exception:  # noqa: BLE001
                pass
            raise DataError(f"cannot write {posixpath.basename(out_path)} into {dst_dir}: {exc}") from None
        summary.converted.append(sid)
        summary.patches += data.num_patches
    summary.dim = expected
    if summary.failed and strict:
        items = list(summary.failed.values())
        shown = "\n".join(f"  - {m}" for m in items[:20])
        more = f"\n  ... and {len(items) - 20} more" if len(items) > 20 else ""
        raise DataError(
            f"{len(items)} of {len(files)} slides could not be converted ({len(summary.converted)} converted, "
            f"{len(summary.skipped)} already there):\n{shown}{more}\nFix or remove these files and run the "
            "conversion again; converted slides are kept and skipped."
        )
    return summary
