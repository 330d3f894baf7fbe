"""ILRA-MIL for milzoo: gated attention blocks through a low-rank latent matrix, then non-local pooling (Xiang & Zhang, ICLR 2023)."""
