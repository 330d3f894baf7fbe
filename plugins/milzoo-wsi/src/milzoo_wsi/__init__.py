"""Whole-slide-image MIL from pre-extracted patch features (docs/methods.md section 7.8).

Modules (import them directly; this package imports nothing heavy so plugin
discovery stays fast):

- :mod:`milzoo_wsi.stores`:       read per-slide features (h5, pt, csv, safetensors) through fsspec
- :mod:`milzoo_wsi.convert`:      ``convert_features`` to fp16 safetensors
- :mod:`milzoo_wsi.table`:        the slide table and the train/test split
- :mod:`milzoo_wsi.dataset`:      the ``slides`` dataset source and :class:`SlideDataset`
- :mod:`milzoo_wsi.protocol`:     the core's folds, Youden threshold and vote, plus DSMIL's selection score
- :mod:`milzoo_wsi.localization`: per-patch tables and heatmaps
- :mod:`milzoo_wsi.commands`:     ``milzoo features convert|split`` and ``milzoo localize``
- :mod:`milzoo_wsi.synthetic`:    a synthetic slide set for benchmarks
"""
