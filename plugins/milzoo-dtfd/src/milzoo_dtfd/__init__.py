"""DTFD-MIL for milzoo: double-tier feature distillation MIL (Zhang et al., CVPR 2022)."""
