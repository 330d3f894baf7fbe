"""RGMIL for milzoo: regressor-guided MIL pooling (Du et al., NeurIPS 2023)."""
