"""DEMIL (code name DEMIPL) for milzoo: disambiguated attention embedding for
multi-instance partial-label learning (Tang, Zhang, Zhang, NeurIPS 2023)."""
