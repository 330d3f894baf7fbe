"""The ``slides`` dataset source: a slide table plus a folder of per-slide feature files."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field

from milzoo.datasets.batch import Bag, MILBatch, collate_bags
from milzoo.components.base import ComponentConfig, DatasetSource
from milzoo.datasets.base import MILDataset
from milzoo.errors import DataError
from milzoo.datasets.resident import Moved, ResidentSplit, tensor_nbytes
from milzoo_wsi.stores import (
    CsvHeader,
    FormatName,
    SlideData,
    SlideFile,
    SlideInfo,
    count_nonfinite,
    estimate_bytes,
    list_slide_files,
    probe_slide,
    read_slide,
)
from milzoo_wsi.table import SlideTable, read_slide_table, stratified_group_split, write_split_table

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class SlideRecord:
    slide_id: str
    label: int
    group: str  # patient id, or the slide id when the table has none
    file: SlideFile


def _list_problems(head: str, problems: list[str], tail: str) -> DataError:
    shown = "\n".join(f"  - {p}" for p in problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return DataError(f"{head}\n{shown}{more}\n{tail}")


def _map_collect(fn: Callable, items: list, workers: int) -> tuple[list, list[str]]:
    """``fn`` over ``items`` (threads); returns results (None on failure) and the DataError messages."""
    results: list = [None] * len(items)
    errors: list[str] = []

    def one(i):
        try:
            return i, fn(items[i]), None
        except DataError as exc:
            return i, None, str(exc)

    if workers > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outs = list(pool.map(one, range(len(items))))
    else:
        outs = [one(i) for i in range(len(items))]
    for i, res, err in outs:
        results[i] = res
        if err is not None:
            errors.append(err)
    return results, errors


class SlideDataset(MILDataset):
    """Slides of one split.  Labels, groups and ids come from the table (no feature is read).

    With a cache (a dict slide id -> :class:`SlideData` held in fp16 or fp32)
    bags come from memory, otherwise each access reads the slide's file.  Bags
    hold ``bag_dtype`` features (float32 unless set to float16), ``coords``
    when the files have them and ``meta = {"slide_id": ...}``.
    """

    def __init__(
        self,
        records: list[SlideRecord],
        class_names: list[str],
        feature_dim: int,
        *,
        cache: dict[str, SlideData] | None = None,
        bag_dtype: torch.dtype = torch.float32,
        csv_header: CsvHeader = "auto",
        expected_from: str = "",
        has_instance_labels: bool = False,
        split_info: dict | None = None,
        split_rows: list[dict] | None = None,
    ):
        if not records:
            raise DataError("a slide dataset needs at least one slide")
        self.records = list(records)
        self.class_names = list(class_names)
        self.feature_dim = int(feature_dim)
        self.instance_shape = (self.feature_dim,)
        self.bag_dtype = bag_dtype
        self.csv_header = csv_header
        self.expected_from = expected_from
        self._cache = cache
        self._has_inst = bool(has_instance_labels)
        self._labels = np.asarray([r.label for r in self.records], dtype=np.int64)
        self._groups = np.asarray([r.group for r in self.records], dtype=object)
        #: how the train/test split was made (shared by the splits of one load)
        self.split_info = dict(split_info or {})
        #: slide_id/label/patient_id/split rows of every slide of the load (see ``write_split``)
        self.split_rows = list(split_rows or [])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def groups(self) -> np.ndarray:
        return self._groups

    @property
    def bag_ids(self) -> list[str]:
        return [r.slide_id for r in self.records]

    @property
    def has_instance_labels(self) -> bool:
        return self._has_inst

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def slide(self, i: int) -> SlideData:
        """The raw content of slide ``i`` (cache dtype, or the stored dtype when reading)."""
        rec = self.records[i]
        if self._cache is not None:
            return self._cache[rec.slide_id]
        return read_slide(rec.file, self.feature_dim, expected_from=self.expected_from, csv_header=self.csv_header)

    def get_bag(self, i: int) -> Bag:
        rec = self.records[i]
        data = self.slide(i)
        return Bag(
            x=data.features.to(self.bag_dtype),
            y=int(rec.label),
            bag_id=rec.slide_id,
            inst_y=data.inst_labels,
            coords=data.coords,
            meta={"slide_id": rec.slide_id},
        )

    def write_split(self, url: str) -> None:
        """Publish the train/test split as a slide table with a ``split`` column."""
        write_split_table(self.split_rows, url)

    # the cache on the training device (milzoo.resident, train.data_on_device), or pinned for fast copies
    def _cached_tensors(self):
        for rec in self.records:
            d = self._cache[rec.slide_id]
            yield from (t for t in (d.features, d.coords, d.inst_labels) if t is not None)

    def resident_nbytes(self, seen: set[int]) -> int | None:
        """Bytes the cache takes on the device; None without a cache (slides read on access stay on the host)."""
        if self._cache is None:
            return None
        return sum(tensor_nbytes(t, seen) for t in self._cached_tensors())

    def to_resident(self, device, moved: Moved) -> ResidentSplit:
        return ResidentSlides(self, moved)

    def pin_memory(self) -> None:
        """Pin the cache's host memory (CUDA training without a device copy), so that the copy of each
        bag to the GPU is a non-blocking DMA; bags of the cache's dtype are views, and stay pinned."""
        if self._cache is None:
            return
        for sid, d in self._cache.items():
            if not d.features.is_pinned():
                self._cache[sid] = SlideData(
                    features=d.features.pin_memory(),
                    coords=None if d.coords is None else d.coords.pin_memory(),
                    inst_labels=None if d.inst_labels is None else d.inst_labels.pin_memory(),
                )


class ResidentSlides(ResidentSplit):
    """A cached :class:`SlideDataset` on the device: the bags of a step are collated there."""

    def __init__(self, ds: SlideDataset, moved: Moved):
        self.bag_ids = ds.bag_ids
        self.labels = [int(r.label) for r in ds.records]
        self.bag_dtype = ds.bag_dtype
        self.slides = []
        for rec in ds.records:
            d = ds._cache[rec.slide_id]
            self.slides.append(tuple(None if t is None else moved(t) for t in (d.features, d.coords, d.inst_labels)))

    def batch(self, rows: list[int], rows_dev: torch.Tensor) -> MILBatch:
        bags = []
        for r in rows:
            feats, coords, inst = self.slides[r]
            sid = self.bag_ids[r]
            bags.append(Bag(x=feats.to(self.bag_dtype), y=self.labels[r], bag_id=sid, index=r, inst_y=inst,
                            coords=coords, meta={"slide_id": sid}))
        return collate_bags(bags)


class SlidesSource(DatasetSource):
    """Whole-slide images from pre-extracted patch features (h5, pt, csv or safetensors) and a slide table."""

    name = "slides"

    class Config(ComponentConfig):
        features: str = Field(description="folder (or fsspec URL) holding one feature file per slide")
        table: str = Field(description="slide table CSV (path or URL): slide_id, label[, patient_id][, split]")
        format: FormatName = Field(default="auto", description="feature file format; auto = from the extension")
        class_names: list[str] | None = Field(
            default=None, min_length=2, description="class order; default: 0..max for integer labels, else sorted names"
        )
        feature_dim: int | None = Field(
            default=None, gt=0, description="expected D; default: the first slide's, checked on every slide"
        )
        cache: Literal["auto", "memory", "none"] = Field(
            default="auto", description="auto: in memory when it fits in cache_max_gb; memory: always; none: read on access"
        )
        cache_max_gb: float = Field(default=8.0, gt=0, description="largest in-memory cache for cache='auto' (GB)")
        dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
            default="auto",
            description="dtype of the in-memory cache. auto: with float32 bags, float32 when the whole set fits in "
            "cache_max_gb in float32 (no conversion per step), else float16; with float16/bfloat16 bags, the bag "
            "dtype. bfloat16: fp32's range, 3 fewer mantissa bits than float16",
        )
        bag_dtype: Literal["float32", "float16", "bfloat16"] = Field(
            default="float32",
            description="dtype of the bags returned; bfloat16 with a bfloat16 cache and train.precision = 'bf16' "
            "runs the first layer in bf16 without any conversion or copy",
        )
        test_fraction: float = Field(
            default=0.25, ge=0.0, lt=1.0,
            description="share of patients held out as test when the table has no split column (0: none)",
        )
        split_seed: int = Field(default=0, description="seed of that train/test split")
        csv_header: CsvHeader = Field(default="auto", description="CSV features: header row auto-detected, yes or no")
        recursive: bool = Field(default=True, description="also look for feature files in sub-folders")
        load_workers: int = Field(default=4, ge=1, description="threads reading headers and filling the cache")

    def __init__(self, config):
        super().__init__(config)
        self.split_info: dict = {}
        self.split_rows: list[dict] = []
        #: estimated bytes of the in-memory cache (None with cache="none")
        self.cache_bytes_estimate: int | None = None
        self.cache_dtype: str | None = None  # the cache's dtype after load() ("auto" resolved)

    # ------------------------------------------------------------------ steps
    def _files(self, table: SlideTable) -> list[SlideFile]:
        cfg = self.config
        files = list_slide_files(cfg.features, cfg.format, recursive=cfg.recursive)
        where = f"{cfg.features}" + ("" if cfg.format == "auto" else f" (format {cfg.format})")
        if not files:
            raise DataError(
                f"no slide feature files (.h5, .pt, .csv, .safetensors) found under {where}; check `features` "
                "and `format`."
            )
        missing = [s for s in table.slide_ids if s not in files]
        if missing:
            shown = ", ".join(repr(s) for s in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise DataError(
                f"{len(missing)} of the {len(table)} slides in {table.source} have no feature file under {where}: "
                f"{shown}. A slide's file must be named <slide_id>.<ext>; fix `features`/`format`, extract the "
                "missing slides, or remove their rows from the table."
            )
        return [files[s] for s in table.slide_ids]

    def _dimension(self, sfs: list[SlideFile], infos: list[SlideInfo]) -> tuple[int, str]:
        cfg = self.config
        if cfg.feature_dim is not None:
            dim, expected_from = cfg.feature_dim, "the `feature_dim` option"
        else:
            first = sfs[0]
            dim = infos[0].dim
            if dim is None:
                dim = read_slide(first, csv_header=cfg.csv_header).dim
            expected_from = f"taken from the first slide {first.slide_id!r}"
        bad = [
            f"slide {sf.slide_id!r} has D={info.dim} ({sf.url})"
            for sf, info in zip(sfs, infos)
            if info.dim is not None and info.dim != dim
        ]
        if bad:
            raise _list_problems(
                f"{len(bad)} slides do not have the expected {dim} features per patch ({expected_from}):",
                bad,
                "All slides of a set must come from the same feature extractor; re-extract them or fix `feature_dim`.",
            )
        return dim, expected_from

    def _fill_cache(self, sfs: list[SlideFile], dim: int, expected_from: str, dtype: str) -> dict[str, SlideData]:
        cfg = self.config
        target = _DTYPES[dtype]

        def load(sf: SlideFile) -> SlideData:
            data = read_slide(sf, dim, expected_from=expected_from, csv_header=cfg.csv_header)
            x = data.features.to(target).contiguous()
            if x.dtype != data.features.dtype and count_nonfinite(x):
                raise DataError(
                    f"slide {sf.slide_id!r}: feature values of {sf.url} overflow {dtype}; "
                    "set `dtype = \"float32\"` for the cache."
                )
            return SlideData(features=x, coords=data.coords, inst_labels=data.inst_labels)

        datas, errors = _map_collect(load, sfs, cfg.load_workers)
        if errors:
            raise _list_problems(f"{len(errors)} of {len(sfs)} slides could not be loaded:", errors,
                                 "Fix or re-extract these files, or remove the slides from the table.")
        return {sf.slide_id: d for sf, d in zip(sfs, datas)}

    def _split(self, table: SlideTable) -> np.ndarray:
        """Boolean test mask, and ``self.split_info``."""
        cfg = self.config
        grouped_by = "patient_id" if table.patient_ids is not None else "slide_id"
        if table.splits is not None:
            # a resolved recipe (the run directory's recipe.toml) sets every field, so compare with the default
            if cfg.test_fraction != type(cfg).model_fields["test_fraction"].default:
                warnings.warn("the slide table has a split column; `test_fraction` is ignored", stacklevel=3)
            is_test = np.asarray([s == "test" for s in table.splits], dtype=bool)
            info = {"method": "table column", "source": table.source}
            if table.patient_ids is not None:
                pats = np.asarray(table.patient_ids, dtype=object)
                leak = set(pats[is_test].tolist()) & set(pats[~is_test].tolist())
                if leak:
                    warnings.warn(
                        f"{len(leak)} patients have slides in both train and test of {table.source} "
                        f"(e.g. {sorted(leak)[:3]})",
                        stacklevel=3,
                    )
        elif cfg.test_fraction > 0:
            is_test = stratified_group_split(table.labels, table.groups, cfg.test_fraction, cfg.split_seed)
            info = {"method": "stratified by label, grouped by " + grouped_by, "test_fraction": cfg.test_fraction,
                    "seed": cfg.split_seed}
        else:
            is_test = np.zeros(len(table), dtype=bool)
            info = {"method": "none"}
        if is_test.all():
            raise DataError(f"every slide of {table.source} is in the test split; some must be for training.")
        info.update(grouped_by=grouped_by, train=int((~is_test).sum()), test=int(is_test.sum()))
        self.split_info = info
        self.split_rows = [
            {
                "slide_id": sid,
                "label": table.class_names[int(y)],
                "patient_id": table.patient_ids[i] if table.patient_ids is not None else "",
                "split": "test" if is_test[i] else "train",
            }
            for i, (sid, y) in enumerate(zip(table.slide_ids, table.labels))
        ]
        return is_test

    # ------------------------------------------------------------------ load
    def load(self) -> dict[str, SlideDataset]:
        cfg = self.config
        table = read_slide_table(cfg.table, cfg.class_names)
        sfs = self._files(table)
        infos, errors = _map_collect(lambda sf: probe_slide(sf, cfg.csv_header), sfs, cfg.load_workers)
        if errors:
            raise _list_problems(f"{len(errors)} of {len(sfs)} slide files are unreadable:", errors,
                                 "Fix or re-extract these files, or remove the slides from the table.")
        dim, expected_from = self._dimension(sfs, infos)
        limit = cfg.cache_max_gb * 1e9
        # estimated feature values of the whole set (estimate_bytes is linear in itemsize; without a header
        # it may stat the file, so it runs once)
        values = sum(estimate_bytes(sf, info, 1) for sf, info in zip(sfs, infos)) if cfg.cache != "none" else 0
        dtype = cfg.dtype
        if dtype == "auto":
            # float32 saves a conversion (and a fresh bag-sized buffer) per step: 14% of an ABMIL epoch on
            # a CPU (docs/wsi.md); float16 halves the memory when float32 does not fit.
            if cfg.bag_dtype == "float32":
                dtype = "float32" if cfg.cache != "none" and values * 4 <= limit else "float16"
            else:  # half-precision bags: cache them as they are returned, nothing to convert
                dtype = cfg.bag_dtype
        self.cache_dtype = dtype
        itemsize = 2 if dtype in ("float16", "bfloat16") else 4
        use_cache = False
        if cfg.cache != "none":
            total = values * itemsize
            use_cache = cfg.cache == "memory" or total <= limit
            if cfg.cache == "memory" and total > limit:
                warnings.warn(
                    f"cache='memory': the features take about {total / 1e9:.1f} GB, above cache_max_gb="
                    f"{cfg.cache_max_gb} ({dtype})",
                    stacklevel=2,
                )
            self.cache_bytes_estimate = total
        cache = self._fill_cache(sfs, dim, expected_from, dtype) if use_cache else None
        has_inst = all(info.has_inst_labels for info in infos) if cache is None else all(
            d.inst_labels is not None for d in cache.values()
        )
        is_test = self._split(table)
        groups = table.groups
        records = [
            SlideRecord(slide_id=sid, label=int(y), group=str(groups[i]), file=sfs[i])
            for i, (sid, y) in enumerate(zip(table.slide_ids, table.labels))
        ]

        def make(sel: np.ndarray) -> SlideDataset:
            recs = [r for r, keep in zip(records, sel) if keep]
            sub_cache = None if cache is None else {r.slide_id: cache[r.slide_id] for r in recs}
            return SlideDataset(
                recs, table.class_names, dim, cache=sub_cache, bag_dtype=_DTYPES[cfg.bag_dtype],
                csv_header=cfg.csv_header, expected_from=expected_from, has_instance_labels=has_inst,
                split_info=self.split_info, split_rows=self.split_rows,
            )

        out = {"train": make(~is_test)}
        if is_test.any():
            out["test"] = make(is_test)
        return out

    def write_split(self, url: str) -> None:
        """Publish the split of the last ``load()`` as a slide table with a ``split`` column."""
        if not self.split_rows:
            raise DataError("call load() before write_split()")
        write_split_table(self.split_rows, url)
