"""RRT-MIL for milzoo: regional re-embedding (R-MSA + EPEG, CR-MSA) ahead of any aggregator (Tang et al., CVPR 2024)."""
