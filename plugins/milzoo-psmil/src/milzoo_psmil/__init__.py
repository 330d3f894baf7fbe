"""PSMIL for milzoo: probability-space attention (PSAtt) and alignment (PSAli).

Seed paper: "Rethinking multiple-instance learning from feature space to
probability space"; specification in docs/methods.md section 7.
"""
