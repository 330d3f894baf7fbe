"""CLAM for milzoo: clustering-constrained attention MIL (Lu et al., Nature Biomedical Engineering 2021)."""
