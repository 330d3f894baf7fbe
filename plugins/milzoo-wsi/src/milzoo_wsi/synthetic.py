"""A synthetic whole-slide feature set for benchmarks and tests (CAMELYON16-sized by default).

Every slide is a blob of patches on a grid (coordinates in pixels of
``patch_size``).  Features are standard normal noise plus a small per-slide
offset (a "stain/batch" effect); in a positive slide a few spatially
contiguous patches (0.5-5 %, a "tumour region") are shifted by ``signal``
along one fixed random unit direction, so the class signal is weak and
localised.  Patch labels are written as ``inst_labels`` (except in CSV).

With ``outcomes=True`` the table also holds a patient-level survival outcome
(``survival_months``, ``censorship`` with **1 = censored**, as CLAM/MCAT/PORPOISE
tables) and a regression target (``target``), both driven by the share of the
patient's patches that are tumour patches (see :func:`patient_outcomes`).
"""

from __future__ import annotations

import csv
import io
import json
import math

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from milzoo_wsi.stores import COORDS, FEATURES, INST_LABELS

_EXT = {"safetensors": "safetensors", "h5": "h5", "pt": "pt", "csv": "csv"}

#: the tumour share of a tumour slide's patches is uniform in this range
_TUMOUR_SHARE = (0.005, 0.05)


def patient_outcomes(tumour_share: np.ndarray, seed: int, censoring: float = 0.3) -> dict[str, np.ndarray]:
    """Survival and regression outcomes of patients whose patches are ``tumour_share`` tumour (``[p]``).

    - ``target``: the tumour percentage plus Gaussian noise (sd 0.05 points);
    - ``survival_months``: an event time ``T ~ Exponential`` with a median of 36 months for a patient without
      tumour and a log hazard ratio of 1.5 per 5% of tumour patches (at most 3), so more tumour means shorter
      survival; a ``censoring`` share of the patients (drawn at random) is censored at a uniform 5-100% of ``T``;
    - ``censorship``: **1 = censored**, 0 = the event was observed at ``survival_months`` (CLAM/MCAT's column).
    """
    g = np.random.default_rng([seed, 2])
    share = np.asarray(tumour_share, dtype=np.float64)
    rate = math.log(2) / 36.0 * np.exp(1.5 * np.minimum(share / _TUMOUR_SHARE[1], 2.0))
    t = g.exponential(1.0 / rate)
    censored = g.random(len(share)) < censoring
    time = np.where(censored, t * g.uniform(0.05, 1.0, size=len(share)), t)
    target = 100.0 * share + 0.05 * g.standard_normal(len(share))
    return {"survival_months": np.round(time, 2), "censorship": censored.astype(np.int64),
            "target": np.round(target, 4)}


def _slide_layout(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, 2]`` integer grid cells forming one irregular tissue blob."""
    side = int(math.ceil(math.sqrt(n / 0.55))) + 2
    gy, gx = np.divmod(np.arange(side * side), side)
    a, b = rng.uniform(0.35, 0.6, size=2) * side
    cx, cy = side / 2, side / 2
    score = ((gx - cx) / a) ** 2 + ((gy - cy) / b) ** 2 + rng.uniform(0, 0.6, size=side * side)
    keep = np.argpartition(score, n - 1)[:n]
    keep.sort()  # row-major order, like tiling a slide
    return np.stack([gx[keep], gy[keep]], axis=1)


def _write(fs, path: str, fmt: str, feats: np.ndarray, coords: np.ndarray, inst: np.ndarray,
           patching: dict | None = None) -> None:
    """One slide file; ``patching`` (TRIDENT's ``coords`` attributes) goes into h5 attributes and
    safetensors metadata."""
    if fmt == "safetensors":
        from safetensors.numpy import save

        meta = {"producer": "milzoo-wsi synthetic"}
        if patching:
            meta["patching"] = json.dumps(patching)
        blob = save({FEATURES: feats, COORDS: coords, INST_LABELS: inst}, metadata=meta)
    elif fmt == "h5":
        import h5py

        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            f.create_dataset(FEATURES, data=feats)
            c = f.create_dataset(COORDS, data=coords)
            for k, v in (patching or {}).items():
                c.attrs[k] = v
            f.create_dataset(INST_LABELS, data=inst)
        blob = buf.getvalue()
    elif fmt == "pt":
        import torch

        buf = io.BytesIO()
        torch.save({FEATURES: torch.from_numpy(feats), COORDS: torch.from_numpy(coords),
                    INST_LABELS: torch.from_numpy(inst)}, buf)
        blob = buf.getvalue()
    elif fmt == "csv":
        buf = io.StringIO()
        np.savetxt(buf, feats.astype(np.float32), fmt="%.4f", delimiter=",")
        blob = buf.getvalue().encode()
    else:
        raise ValueError(f"unknown format {fmt!r}; use {', '.join(_EXT)}")
    fs.pipe_file(path, blob)


def make_synthetic_slides(
    out_dir: str,
    n_slides: int = 270,
    mean_patches: int = 8000,
    dim: int = 1024,
    seed: int = 0,
    fmt: str = "safetensors",
    *,
    n_test: int = 0,
    positive_fraction: float = 0.41,
    signal: float = 1.5,
    patch_size: int = 256,
    slides_per_patient: int = 1,
    skip_existing: bool = False,
    outcomes: bool = False,
    censoring: float = 0.3,
    patient_column: str = "patient_id",
) -> dict:
    """Write ``out_dir/features/<slide_id>.<ext>`` (fp16) and the slide table ``out_dir/slides.csv``.

    ``n_slides`` training slides plus ``n_test`` test slides (a ``split``
    column is written when ``n_test > 0``); labels ``normal``/``tumor`` with
    about ``positive_fraction`` tumour slides; patch counts vary log-normally
    around ``mean_patches`` (between a tenth and 4x of it).  Patients group
    ``slides_per_patient`` consecutive slides, never across the train/test
    boundary; ``patient_column`` names their column (``case_id`` for a
    CLAM/TCGA-shaped table).  h5 and safetensors files say how the slides
    were patched as TRIDENT does (``patch_size``, ``patch_size_level0``, a
    20x target and level-0 magnification).  ``out_dir`` may be any fsspec
    URL.  Returns ``{"features", "table", "n_slides", "n_patches", "dim"}``.

    With ``outcomes`` the table also has the columns ``survival_months``,
    ``censorship`` (**1 = censored**; about ``censoring`` of the patients) and
    ``target``, the same for every slide of a patient and driven by its share
    of tumour patches (:func:`patient_outcomes`).  The tumour share of each
    slide then comes from its own generator ``(seed, i, 1)``, so that the
    outcomes are known without generating (or reading) any slide.

    Labels, sizes and the signal direction come from ``seed``; each slide's
    content from its own generator seeded by ``(seed, i)``, so with
    ``skip_existing`` an interrupted generation resumes where it stopped (slides
    whose file exists are not generated again) and gives the same set.  Files
    are written under a temporary name and renamed, and the table is written
    last.
    """
    if fmt not in _EXT:
        raise ValueError(f"unknown format {fmt!r}; use {', '.join(_EXT)}")
    rng = np.random.default_rng(seed)
    total = n_slides + n_test
    fs, root = fsspec.core.url_to_fs(out_dir)
    root = root.rstrip("/")
    feat_dir = f"{root}/features"
    fs.makedirs(feat_dir, exist_ok=True)

    direction = rng.standard_normal(dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    labels = np.zeros(total, dtype=np.int64)
    for lo, hi in ((0, n_slides), (n_slides, total)):  # same ratio in train and test
        m = hi - lo
        pos = rng.permutation(m)[: int(round(m * positive_fraction))]
        labels[lo + pos] = 1
    sigma = 0.5
    sizes = np.round(mean_patches * np.exp(sigma * rng.standard_normal(total) - sigma**2 / 2)).astype(np.int64)
    sizes = np.clip(sizes, max(1, mean_patches // 10), mean_patches * 4)

    patching = {"patch_size": patch_size, "patch_size_level0": patch_size, "target_magnification": 20,
                "level0_magnification": 20, "overlap": 0}
    spp = max(1, slides_per_patient)
    # test patients start after the last training patient, so no patient straddles the split
    patients = np.asarray([i // spp if i < n_slides else -(-n_slides // spp) + (i - n_slides) // spp
                           for i in range(total)], dtype=np.int64)
    tumour_count = None
    if outcomes:  # each slide's tumour patch count, known without generating its content
        share = np.asarray([np.random.default_rng([seed, i, 1]).uniform(*_TUMOUR_SHARE) for i in range(total)])
        tumour_count = np.where(labels == 1, np.maximum(1, np.round(sizes * share)), 0).astype(np.int64)
        n_pat = int(patients.max()) + 1
        per_patient = np.bincount(patients, weights=tumour_count, minlength=n_pat) / np.bincount(
            patients, weights=sizes, minlength=n_pat)
        outcome = patient_outcomes(per_patient, seed, censoring)
    rows = []
    for i in range(total):
        n = int(sizes[i])
        sid = f"slide_{i:04d}"
        patient = int(patients[i])
        row = {"slide_id": sid, "label": "tumor" if labels[i] else "normal", patient_column: f"patient_{patient:04d}"}
        if n_test > 0:
            row["split"] = "test" if i >= n_slides else "train"
        if outcomes:
            row.update({k: str(v[patient]) for k, v in outcome.items()})
        rows.append(row)
        path = f"{feat_dir}/{sid}.{_EXT[fmt]}"
        if skip_existing and fs.exists(path):
            continue
        srng = np.random.default_rng([seed, i])
        cells = _slide_layout(srng, n)
        feats = srng.standard_normal((n, dim), dtype=np.float32)
        feats += srng.normal(0.0, 0.1, size=dim).astype(np.float32)  # per-slide offset
        inst = np.zeros(n, dtype=np.int64)
        if labels[i] == 1:
            k = max(1, int(round(n * srng.uniform(*_TUMOUR_SHARE))))
            if tumour_count is not None:
                k = int(tumour_count[i])
            centre = cells[srng.integers(n)]
            d2 = ((cells - centre) ** 2).sum(axis=1)
            tumour = np.argpartition(d2, k - 1)[:k]
            inst[tumour] = 1
            feats[tumour] += signal * direction
        coords = (cells * patch_size).astype(np.int64)
        tmp = f"{feat_dir}/.{sid}.tmp"
        _write(fs, tmp, fmt, feats.astype(np.float16), coords, inst, patching)
        fs.mv(tmp, path)

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    table = f"{root}/slides.csv"
    fs.pipe_file(table, buf.getvalue().encode())
    local = isinstance(fs, LocalFileSystem)
    unstrip = (lambda p: p) if local else fs.unstrip_protocol  # noqa: E731
    return {
        "features": unstrip(feat_dir),
        "table": unstrip(table),
        "n_slides": total,
        "n_patches": int(sizes.sum()),
        "dim": dim,
    }
