"""ABMIL for milzoo: attention-based deep MIL (Ilse, Tomczak, Welling, ICML 2018)."""
