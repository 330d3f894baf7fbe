"""TransMIL for milzoo: correlated MIL with a Nystrom-attention transformer (Shao et al., NeurIPS 2021)."""
