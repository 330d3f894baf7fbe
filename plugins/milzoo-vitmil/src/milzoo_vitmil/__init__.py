"""Transformer-MIL for milzoo: a class-token pre-norm transformer over the instances (Wagner et al., Cancer Cell 2023)."""
