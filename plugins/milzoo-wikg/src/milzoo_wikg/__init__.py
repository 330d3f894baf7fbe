"""WiKG for milzoo: a bag as a dynamic knowledge graph of its instances, with knowledge-aware attention (Li et al., CVPR 2024)."""
