"""Per-patch scores as a GeoJSON FeatureCollection that QuPath opens (File > Import objects from file).

One ``Polygon`` per patch: the patch's square in level-0 pixels (origin at the slide's top-left corner, as
QuPath expects), closed ring, clockwise in image coordinates.  QuPath reads from each feature's
``properties``:

- ``objectType``: ``detection`` by default (light, many thousands per slide are fine, and QuPath's
  *Measure > Show measurement maps* colours them by any measurement), or ``annotation`` / ``tile``;
- ``measurements``: a map of name to number (QuPath 0.4 and later; earlier versions wrote a list of
  ``{"name", "value"}``, which QuPath still reads): here ``attention`` and the instance scores;
- ``name`` (``patch <row>``, the row in the feature file) and ``color`` (``[r, g, b]``: the value drawn, in the
  heatmap's colour map).

Non-finite values are left out of ``measurements`` (JSON has no NaN).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

OBJECT_TYPES = ("detection", "annotation", "tile")


def _colors(values: np.ndarray, cmap: str) -> list[list[int]] | None:
    import matplotlib

    finite = values[np.isfinite(values)]
    if not finite.size:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    norm = (values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5)
    rgba = matplotlib.colormaps[cmap](np.nan_to_num(norm, nan=0.0))
    return [[int(round(c * 255)) for c in row[:3]] for row in rgba]


def patch_features(
    coords,
    patch_size: float,
    measurements: Mapping[str, Sequence[float]],
    *,
    color_by: str | None = None,
    cmap: str | None = None,
    object_type: str = "detection",
    slide_id: str | None = None,
) -> dict[str, Any]:
    """The FeatureCollection of ``n`` patches: ``coords`` ``[n, 2]`` top-left corners (level-0 pixels),
    ``patch_size`` their side in level-0 pixels, ``measurements`` name -> ``[n]`` values.

    ``color_by`` names the measurement whose value sets each patch's colour (in ``cmap``, the heatmaps'
    colour map by default).
    """
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}, not {object_type!r}")
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    n = len(c)
    s = float(patch_size)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"patch_size must be a positive number of pixels, not {patch_size!r}")
    cols = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in measurements.items()}
    for k, v in cols.items():
        if len(v) != n:
            raise ValueError(f"measurement {k!r} has {len(v)} values for {n} patches")
    colors = None
    if color_by is not None and color_by in cols:
        if cmap is None:
            from milzoo.report.common import VALUE_CMAP

            cmap = VALUE_CMAP
        colors = _colors(cols[color_by], cmap)
    feats = []
    for i in range(n):
        x, y = float(c[i, 0]), float(c[i, 1])
        ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
        props: dict[str, Any] = {
            "objectType": object_type,
            "name": f"patch {i}",
            "measurements": {k: float(v[i]) for k, v in cols.items() if math.isfinite(v[i])},
        }
        if colors is not None and math.isfinite(cols[color_by][i]):
            props["color"] = colors[i]
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": props})
    fc: dict[str, Any] = {"type": "FeatureCollection", "features": feats}
    if slide_id is not None:
        fc["milzoo"] = {"slide_id": str(slide_id), "patch_size_level0": s}
    return fc


def dumps(fc: Mapping[str, Any]) -> str:
    """Compact JSON text of a FeatureCollection (``allow_nan=False``: standard JSON only)."""
    return json.dumps(fc, separators=(",", ":"), allow_nan=False)
