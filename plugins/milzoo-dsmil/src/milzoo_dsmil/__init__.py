"""DSMIL for milzoo: dual-stream multiple-instance learning (Li, Li, Eliceiri, CVPR 2021)."""
