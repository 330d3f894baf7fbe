"""The ``slides`` dataset source: a slide table plus a folder of per-slide feature files."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from milzoo.datasets.batch import Bag, MILBatch, collate_bags
from milzoo.components.base import ComponentConfig, DatasetSource
from milzoo.datasets.base import MILDataset
from milzoo.errors import DataError, MilzooWarning
from milzoo.datasets.resident import Moved, ResidentSplit, tensor_nbytes
from milzoo_wsi.stores import (
    PATCHING_KEYS,
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
    slide_id_stem,
)
from milzoo_wsi.table import (
    CENSORSHIP_COLUMN,
    EVENT_COLUMN,
    PATIENT_COLUMNS,
    TARGET_COLUMNS,
    TIME_COLUMN,
    SlideTable,
    Target,
    check_split_column,
    class_names_problem,
    read_slide_table,
    stratified_group_split,
    write_split_table,
)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

#: what the held-out test patients are stratified by (milzoo.datasets.label_strata), per target
_STRATA = {"class": "label", "survival": "event indicator", "regression": "target quartile"}


@dataclass(frozen=True)
class SlideRecord:
    """One bag: a slide, or with ``bag = "patient"`` every slide of a patient, concatenated in table order."""

    slide_id: str  # the bag's id: the slide id as the table writes it, or the patient id
    #: a class index (int); a regression target (float) or targets (tuple); a (time, event) tuple (survival)
    label: Any
    group: str  # patient id, or the slide id when the table has none
    file: SlideFile  # the slide's file (a patient's bag: its first slide's)
    files: tuple[SlideFile, ...] = ()  # a patient's bag: the file of each of its slides
    slide_ids: tuple[str, ...] = ()  # a patient's bag: its slides
    patching: tuple = ()  # a slide's (key, value) pairs of how it was patched (stores.patching_from_attrs)

    @property
    def is_patient(self) -> bool:
        return bool(self.files)

    @property
    def all_files(self) -> tuple[SlideFile, ...]:
        return self.files or (self.file,)


def bag_label(label: Any) -> Any:
    """A record's label as ``Bag.y``: a class index (int), a target (float), or a float32 vector (several
    regression targets; a survival ``(time, event)`` pair)."""
    if isinstance(label, tuple):
        return np.asarray(label, dtype=np.float32)
    if isinstance(label, (int, np.integer)):
        return int(label)
    return float(label)


def labels_array(labels: list[Any], target: str) -> np.ndarray:
    """``MILDataset.labels`` of records' labels: int64 class indices ``[n]``; float64 ``[n]``, ``[n, t]``
    (regression) or ``[n, 2]`` (survival: time, event)."""
    if target == "class":
        return np.asarray(labels, dtype=np.int64)
    return np.asarray(labels, dtype=np.float64)


def concat_slides(parts: list[SlideData]) -> SlideData:
    """One patient's bag: its slides' patches one after the other (``parts`` holds each slide's count)."""
    dtypes = {d.features.dtype for d in parts}
    dtype = parts[0].features.dtype if len(dtypes) == 1 else torch.float32
    feats = torch.cat([d.features.to(dtype) for d in parts]) if len(parts) > 1 else parts[0].features
    coords = None
    if all(d.coords is not None for d in parts):
        float_c = any(d.coords.is_floating_point() for d in parts)
        coords = torch.cat([d.coords.float() if float_c else d.coords for d in parts])
    inst = torch.cat([d.inst_labels for d in parts]) if all(d.inst_labels is not None for d in parts) else None
    return SlideData(features=feats, coords=coords, inst_labels=inst, parts=tuple(d.num_patches for d in parts))


def read_record(rec: SlideRecord, dim: int | None = None, *, expected_from: str = "",
                csv_header: CsvHeader = "auto") -> SlideData:
    """The content of one bag (stored dtype): its slide's file, or a patient's slides concatenated."""
    datas = [read_slide(sf, dim, expected_from=expected_from, csv_header=csv_header) for sf in rec.all_files]
    return concat_slides(datas) if rec.is_patient else datas[0]


def bag_meta(rec: SlideRecord, data: SlideData) -> dict:
    """``Bag.meta`` of a bag: ``slide_id`` (and ``patching`` when known), or for a patient's bag ``patient_id``,
    ``slide_ids`` and ``slide_patches`` (how many of the bag's patches, in order, come from each slide)."""
    if rec.is_patient:
        return {"patient_id": rec.slide_id, "slide_ids": list(rec.slide_ids),
                "slide_patches": list(data.parts or ())}
    meta: dict = {"slide_id": rec.slide_id}
    if rec.patching:
        meta["patching"] = dict(rec.patching)
    return meta


def summarize_patching(per_slide: list[dict]) -> dict:
    """How a set of slides was patched: per key of :data:`~milzoo_wsi.stores.PATCHING_KEYS`, the value all
    slides that say share, or the sorted list of the values found; ``slides`` and ``slides_with_attributes``
    count them."""
    known = [p for p in per_slide if p]
    out: dict = {"slides": len(per_slide), "slides_with_attributes": len(known)}
    for key in PATCHING_KEYS:
        values = list(dict.fromkeys(p[key] for p in known if key in p))
        if values:
            out[key] = values[0] if len(values) == 1 else sorted(values, key=lambda v: (str(type(v)), v))
    return out


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

    ``labels`` are int64 class indices (``target = "class"``), float64 ``(time, event)`` pairs ``[n, 2]``
    (``"survival"``, event 1 = observed) or float64 targets ``[n]`` / ``[n, t]`` (``"regression"``); a bag's
    ``y`` is the int, the float, or a float32 vector (:func:`bag_label`).

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
        data_info: dict | None = None,
        target: str = "class",
    ):
        if not records:
            raise DataError("a slide dataset needs at least one slide")
        self.records = list(records)
        #: what a label is: "class" (int64 labels), "survival" ([n, 2] time, event) or "regression"
        self.target = target
        self.class_names = list(class_names)
        self.feature_dim = int(feature_dim)
        self.instance_shape = (self.feature_dim,)
        self.bag_dtype = bag_dtype
        self.csv_header = csv_header
        self.expected_from = expected_from
        self._cache = cache
        self._has_inst = bool(has_instance_labels)
        self._labels = labels_array([r.label for r in self.records], target)
        self._groups = np.asarray([r.group for r in self.records], dtype=object)
        #: how the train/test split was made (shared by the splits of one load)
        self.split_info = dict(split_info or {})
        #: slide_id/label/patient/split rows of every slide of the load (see ``write_split``)
        self.split_rows = list(split_rows or [])
        #: what a run should record of the data (shared by the splits of one load): the bag rule (``bag``),
        #: the patient column and grouping, the split, and how the slides were patched (``patching``)
        self.data_info = dict(data_info or {})

    @property
    def patching(self) -> dict:
        """How the slides were patched, from their files' attributes (TRIDENT/CLAM h5 ``coords`` attributes,
        or the metadata ``milzoo features convert`` keeps): ``patch_size``, ``magnification``,
        ``patch_level``, ``patch_size_level0``, ... (see :func:`summarize_patching`); empty keys are unknown."""
        return dict(self.data_info.get("patching", {}))

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
        """The raw content of bag ``i`` (cache dtype, or the stored dtype when reading): a slide, or a
        patient's slides concatenated (``bag = "patient"``)."""
        rec = self.records[i]
        if self._cache is not None:
            return self._cache[rec.slide_id]
        return read_record(rec, self.feature_dim, expected_from=self.expected_from, csv_header=self.csv_header)

    def get_bag(self, i: int) -> Bag:
        rec = self.records[i]
        data = self.slide(i)
        return Bag(
            x=data.features.to(self.bag_dtype),
            y=bag_label(rec.label),
            bag_id=rec.slide_id,
            inst_y=data.inst_labels,
            coords=data.coords,
            meta=bag_meta(rec, data),
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
                    parts=d.parts,
                )


class ResidentSlides(ResidentSplit):
    """A cached :class:`SlideDataset` on the device: the bags of a step are collated there."""

    def __init__(self, ds: SlideDataset, moved: Moved):
        self.bag_ids = ds.bag_ids
        self.labels = [bag_label(r.label) for r in ds.records]
        self.bag_dtype = ds.bag_dtype
        self.slides = []
        self.metas = []
        for rec in ds.records:
            d = ds._cache[rec.slide_id]
            self.slides.append(tuple(None if t is None else moved(t) for t in (d.features, d.coords, d.inst_labels)))
            self.metas.append(bag_meta(rec, d))

    def batch(self, rows: list[int], rows_dev: torch.Tensor) -> MILBatch:
        bags = []
        for r in rows:
            feats, coords, inst = self.slides[r]
            sid = self.bag_ids[r]
            bags.append(Bag(x=feats.to(self.bag_dtype), y=self.labels[r], bag_id=sid, index=r, inst_y=inst,
                            coords=coords, meta=dict(self.metas[r])))
        return collate_bags(bags)


class SlidesSource(DatasetSource):
    """Whole-slide images from pre-extracted patch features (h5, pt, csv or safetensors) and a slide table."""

    name = "slides"

    class Config(ComponentConfig):
        features: str = Field(description="folder (or fsspec URL) holding one feature file per slide")
        table: str = Field(
            description="slide table CSV (path or URL): slide_id, the label column(s) of `target`[, patient_id or "
            "case_id][, split]"
        )
        format: FormatName = Field(default="auto", description="feature file format; auto = from the extension")
        target: Target = Field(
            default="class",
            description="what a slide's label is: class (the column `label`), survival (time and censoring columns: "
            "(time, event) labels for [task] name = 'survival') or regression (the numeric `target_columns`, for "
            "[task] name = 'regression')",
        )
        time_column: str = Field(
            default=TIME_COLUMN, min_length=1,
            description="target = 'survival': the column of the follow-up time (CLAM/MCAT/PORPOISE: survival_months)",
        )
        censorship_column: str | None = Field(
            default=CENSORSHIP_COLUMN,
            description="target = 'survival': the censoring column where 1 MEANS CENSORED (CLAM/MCAT/PORPOISE's "
            "censorship); used when the table has it; '' ignores it",
        )
        event_column: str | None = Field(
            default=EVENT_COLUMN,
            description="target = 'survival': the event column where 1 means the event was observed; used when the "
            "table has it (with both, they must agree); '' ignores it",
        )
        target_columns: list[str] = Field(
            default=list(TARGET_COLUMNS), min_length=1,
            description="target = 'regression': the numeric target column(s), one per output of the task "
            "(task.targets); the dataset's class_names are these names",
        )
        class_names: list[str] | None = Field(
            default=None, min_length=2,
            description="target = 'class': class order; default: 0..max for integer labels, else sorted names",
        )
        feature_dim: int | None = Field(
            default=None, gt=0, description="expected D; default: the first slide's, checked on every slide"
        )
        patient_column: str | None = Field(
            default=None, min_length=1,
            description="column of the slide table naming each slide's patient (splits and folds never separate "
            "a patient's slides); default: patient_id, else case_id (CLAM), when the table has one; "
            "'slide_id': every slide its own patient",
        )
        bag: Literal["slide", "patient"] = Field(
            default="slide",
            description="slide: one bag per slide; patient: one bag per patient, its slides' patches concatenated "
            "in table order (its slides must share one label)",
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

        @field_validator("censorship_column", "event_column", mode="before")
        @classmethod
        def _none_is_empty(cls, value):
            # "" (or None from Python) = the column is not read; kept as "" so that a resolved recipe (which
            # leaves out None values) reads back the same
            return "" if value is None else value.strip() if isinstance(value, str) else value

        @model_validator(mode="after")
        def _target_options(self):
            if self.target != "class" and self.class_names is not None:
                raise ValueError(class_names_problem(self.target))
            # options of another target are a recipe that forgot `target` (a resolved recipe writes the defaults)
            fields = type(self).model_fields
            owner = {"time_column": "survival", "censorship_column": "survival", "event_column": "survival",
                     "target_columns": "regression"}
            stray = [k for k, t in owner.items()
                     if t != self.target and getattr(self, k) != fields[k].get_default(call_default_factory=True)]
            if stray:
                raise ValueError(
                    f"{stray[0]} is read only with target = {owner[stray[0]]!r}, but target = {self.target!r}; set "
                    f"`target = \"{owner[stray[0]]}\"` when the table holds {owner[stray[0]]} labels, or remove "
                    f"{', '.join(stray)}."
                )
            if len(set(self.target_columns)) != len(self.target_columns):
                raise ValueError(f"target_columns {self.target_columns} names a column twice; name each once.")
            if self.target == "survival" and not self.censorship_column and not self.event_column:
                raise ValueError("target = 'survival' needs a censoring column: set censorship_column (1 = censored) "
                                 "or event_column (1 = event observed); both are empty.")
            return self

    def __init__(self, config):
        super().__init__(config)
        self.split_info: dict = {}
        self.split_rows: list[dict] = []
        #: what a run should record of the data after load() (see SlideDataset.data_info)
        self.data_info: dict = {}
        #: estimated bytes of the in-memory cache (None with cache="none")
        self.cache_bytes_estimate: int | None = None
        self.cache_dtype: str | None = None  # the cache's dtype after load() ("auto" resolved)

    # ------------------------------------------------------------------ steps
    def read_table(self) -> SlideTable:
        """The recipe's slide table, read and checked (its patient column as the recipe says)."""
        cfg = self.config
        return read_slide_table(cfg.table, cfg.class_names, patient_column=cfg.patient_column, target=cfg.target,
                                time_column=cfg.time_column, censorship_column=cfg.censorship_column or None,
                                event_column=cfg.event_column or None, target_columns=cfg.target_columns)

    def _files(self, table: SlideTable) -> list[SlideFile]:
        cfg = self.config
        files = list_slide_files(cfg.features, cfg.format, recursive=cfg.recursive)
        where = f"{cfg.features}" + ("" if cfg.format == "auto" else f" (format {cfg.format})")
        if not files:
            raise DataError(
                f"no slide feature files (.h5, .pt, .csv, .safetensors) found under {where}; check `features` "
                "and `format`."
            )
        out, missing, used, twice = [], [], {}, []
        for sid in table.slide_ids:
            sf = files.get(sid) or files.get(slide_id_stem(sid))
            if sf is None:
                missing.append(sid)
                continue
            if sf.url in used:
                twice.append(f"{used[sf.url]!r} and {sid!r} ({sf.url})")
            used[sf.url] = sid
            out.append(sf)
        if missing:
            raise _missing_slides(table, missing, files, where)
        if twice:
            raise DataError(
                f"{len(twice)} pair(s) of rows of the slide table {table.source} find the same feature file once a "
                f"whole-slide extension is dropped from the slide id: {'; '.join(twice[:5])}. Each slide needs "
                "its own file; remove the repeated rows or rename the files so the ids differ."
            )
        return out

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

    def _fill_cache(self, records: list[SlideRecord], dim: int, expected_from: str, dtype: str) -> dict[str, SlideData]:
        cfg = self.config
        target = _DTYPES[dtype]

        def load(rec: SlideRecord) -> SlideData:
            data = read_record(rec, dim, expected_from=expected_from, csv_header=cfg.csv_header)
            x = data.features.to(target).contiguous()
            if x.dtype != data.features.dtype and count_nonfinite(x):
                raise DataError(
                    f"{'patient' if rec.is_patient else 'slide'} {rec.slide_id!r}: feature values of "
                    f"{rec.file.url} overflow {dtype}; set `dtype = \"float32\"` for the cache."
                )
            return SlideData(features=x, coords=data.coords, inst_labels=data.inst_labels, parts=data.parts)

        datas, errors = _map_collect(load, records, cfg.load_workers)
        if errors:
            raise _list_problems(f"{len(errors)} of {len(records)} bags could not be loaded:", errors,
                                 "Fix or re-extract these files, or remove the slides from the table.")
        return {rec.slide_id: d for rec, d in zip(records, datas)}

    def _split(self, table: SlideTable) -> np.ndarray:
        """Boolean test mask (one per slide), and ``self.split_info``.  Every split is grouped by patient."""
        cfg = self.config
        other_patients = cfg.patient_column is not None and table.patient_column != cfg.patient_column
        if other_patients or table.target != cfg.target:
            table = self.read_table()  # a table read without the recipe's patient column or target
        grouped_by = table.patient_column or "slide_id"
        if table.splits is not None:
            # a resolved recipe (the run directory's recipe.toml) sets every field, so compare with the default
            if cfg.test_fraction != type(cfg).model_fields["test_fraction"].default:
                warnings.warn("the slide table has a split column; `test_fraction` is ignored", stacklevel=3)
            check_split_column(table)
            is_test = np.asarray([s == "test" for s in table.splits], dtype=bool)
            info = {"method": "table column", "source": table.source}
        elif cfg.test_fraction > 0:
            is_test = stratified_group_split(table.labels, table.groups, cfg.test_fraction, cfg.split_seed)
            info = {"method": f"stratified by {_STRATA[table.target]}, grouped " + table.grouping,
                    "test_fraction": cfg.test_fraction, "seed": cfg.split_seed}
        else:
            is_test = np.zeros(len(table), dtype=bool)
            info = {"method": "none"}
        if is_test.all():
            raise DataError(f"every slide of {table.source} is in the test split; some must be for training.")
        info.update(grouped_by=grouped_by, train=int((~is_test).sum()), test=int(is_test.sum()))
        if table.patient_column is None:
            info["patient_columns_looked_for"] = list(PATIENT_COLUMNS)
        self.split_info = info
        pkey = "patient_id" if table.patient_column in (None, "slide_id") else table.patient_column
        self.split_rows = [
            {
                "slide_id": sid,
                **table.label_fields(i),
                pkey: table.patient_ids[i] if table.patient_ids is not None and table.patient_column != "slide_id" else "",
                "split": "test" if is_test[i] else "train",
            }
            for i, sid in enumerate(table.slide_ids)
        ]
        return is_test

    def _records(self, table: SlideTable, sfs: list[SlideFile], infos: list[SlideInfo]) -> list[SlideRecord]:
        """One record per slide, or with ``bag = "patient"`` one per patient (in order of first appearance)."""
        groups = table.groups
        slides = [
            SlideRecord(slide_id=sid, label=table.label_of(i), group=str(groups[i]), file=sfs[i],
                        patching=tuple(infos[i].patching.items()))
            for i, sid in enumerate(table.slide_ids)
        ]
        if self.config.bag == "slide":
            return slides
        if table.patient_column is None:
            raise DataError(
                f"`bag = \"patient\"` makes one bag of each patient's slides, but the slide table {table.source} "
                f"has no patient column (looked for {', '.join(PATIENT_COLUMNS)}); add one, name it with "
                "`patient_column`, or use `bag = \"slide\"`."
            )
        by: dict[str, list[SlideRecord]] = {}
        for r in slides:
            by.setdefault(r.group, []).append(r)
        mixed = [
            f"{p} ({', '.join(f'{r.slide_id}: {table.describe_label(r.label)}' for r in rs[:4])})"
            for p, rs in by.items() if len({r.label for r in rs}) > 1
        ]
        if mixed:
            what, whats = {"class": ("label", "labels"), "survival": ("survival time and event", "times or events"),
                           "regression": ("target", "targets")}[table.target]
            raise DataError(
                f"`bag = \"patient\"` gives each patient one bag with one {what}, but {len(mixed)} patient(s) of "
                f"{table.source} have slides of different {whats}: {'; '.join(mixed[:5])}"
                f"{'; ...' if len(mixed) > 5 else ''}. Use `bag = \"slide\"` (one bag per slide, the patient "
                f"still grouping the splits), or give each patient's slides the patient's {what}."
            )
        return [
            SlideRecord(slide_id=p, label=rs[0].label, group=p, file=rs[0].file,
                        files=tuple(r.file for r in rs), slide_ids=tuple(r.slide_id for r in rs))
            for p, rs in by.items()
        ]

    # ------------------------------------------------------------------ load
    def load(self) -> dict[str, SlideDataset]:
        cfg = self.config
        table = self.read_table()
        sfs = self._files(table)
        infos, errors = _map_collect(lambda sf: probe_slide(sf, cfg.csv_header), sfs, cfg.load_workers)
        if errors:
            raise _list_problems(f"{len(errors)} of {len(sfs)} slide files are unreadable:", errors,
                                 "Fix or re-extract these files, or remove the slides from the table.")
        dim, expected_from = self._dimension(sfs, infos)
        records = self._records(table, sfs, infos)
        is_test = self._split(table)
        patching = summarize_patching([info.patching for info in infos])
        _warn_mixed_patching(infos, sfs)
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
        cache = self._fill_cache(records, dim, expected_from, dtype) if use_cache else None
        has_inst = all(info.has_inst_labels for info in infos) if cache is None else all(
            d.inst_labels is not None for d in cache.values()
        )
        if cfg.bag == "slide":
            on_test = is_test
        else:  # every split is grouped by patient, so a patient's slides are all on one side
            test_groups = {str(g) for g, t in zip(table.groups, is_test) if t}
            on_test = np.asarray([r.group in test_groups for r in records], dtype=bool)
        self.data_info = {
            "bag": cfg.bag,
            "target": table.target,
            "label_columns": list(table.label_columns),
            "patient_column": table.patient_column,
            "grouped": table.grouping,
            "slides": len(table),
            "patients": len(set(table.groups.tolist())) if table.patient_column else None,
            "bags": len(records),
            "split": dict(self.split_info),
            "patching": patching,
        }

        def make(sel: np.ndarray) -> SlideDataset:
            recs = [r for r, keep in zip(records, sel) if keep]
            sub_cache = None if cache is None else {r.slide_id: cache[r.slide_id] for r in recs}
            return SlideDataset(
                recs, table.class_names, dim, cache=sub_cache, bag_dtype=_DTYPES[cfg.bag_dtype],
                csv_header=cfg.csv_header, expected_from=expected_from, has_instance_labels=has_inst,
                split_info=self.split_info, split_rows=self.split_rows, data_info=self.data_info,
                target=table.target,
            )

        out = {"train": make(~on_test)}
        if on_test.any():
            out["test"] = make(on_test)
        return out

    def write_split(self, url: str) -> None:
        """Publish the split of the last ``load()`` as a slide table with a ``split`` column."""
        if not self.split_rows:
            raise DataError("call load() before write_split()")
        write_split_table(self.split_rows, url)


def _missing_slides(table: SlideTable, missing: list[str], files: dict[str, SlideFile], where: str) -> DataError:
    """One paragraph: how many slides have no file, examples of both sides' names, and what may be wrong."""
    shown = ", ".join(repr(s) for s in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
    names = [sf.url.rsplit("/", 1)[-1] for sf in list(files.values())[:3]]
    hints = []
    lower = {k.lower(): k for k in files}
    case = [(m, lower[slide_id_stem(m).lower()]) for m in missing if slide_id_stem(m).lower() in lower]
    if case:
        m, k = case[0]
        hints.append(
            f"{len(case)} of the missing ids match a file when upper and lower case are ignored (e.g. {m!r} and "
            f"{files[k].url.rsplit('/', 1)[-1]!r}), but ids are case-sensitive: fix the ids or rename the files"
        )
    stems = [slide_id_stem(m) for m in missing[:50]]
    keys = list(files)[:5000]
    part = next(((m, k) for m in stems for k in keys if k != m and (k.startswith(m) or m.startswith(k))), None)
    if part:
        hints.append(
            f"some ids are only part of a file name or the other way round (e.g. {part[0]!r} and file "
            f"{files[part[1]].url.rsplit('/', 1)[-1]!r}): the id must be the whole file name without its extension"
        )
    hint = ("; ".join(hints) + ". ") if hints else ""
    return DataError(
        f"{len(missing)} of the {len(table)} slides in {table.source} have no feature file under {where}: {shown}. "
        f"The table's ids look like {', '.join(repr(s) for s in table.slide_ids[:3])}, and the {len(files)} feature "
        f"files there are named like {', '.join(repr(n) for n in names)}. {hint}A slide's file must be named "
        "<slide_id>.<ext> (.h5, .pt, .csv or .safetensors); a whole-slide extension on the id (.svs, .tif, .ndpi, "
        ".mrxs, ...) is ignored, so 'TCGA-XX.svs' finds 'TCGA-XX.h5'. Fix `features`/`format`, extract the missing "
        "slides, or remove their rows from the table."
    )


def _warn_mixed_patching(infos: list[SlideInfo], sfs: list[SlideFile]) -> None:
    """Warn when the files say their slides were patched at different magnifications or patch sizes."""
    for key in ("magnification", "patch_size"):
        counts: dict = {}
        for sf, info in zip(sfs, infos):
            if key in info.patching:
                counts.setdefault(info.patching[key], []).append(sf.slide_id)
        if len(counts) > 1:
            shown = ", ".join(f"{v} ({len(ids)} slides, e.g. {ids[0]!r})" for v, ids in counts.items())
            warnings.warn(
                f"the feature files give different {key.replace('_', ' ')}s: {shown}. A model sees patches of "
                "one scale at a time best; re-extract the odd slides with the others' settings.",
                MilzooWarning, stacklevel=3,
            )
