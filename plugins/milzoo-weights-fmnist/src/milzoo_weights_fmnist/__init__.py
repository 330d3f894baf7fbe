"""Trained milzoo models on Fashion-MNIST bags (PSMIL and ABMIL with the paper's CNN, reduced scale).

Each model is a Hub folder under ``weights/`` (what ``milzoo export`` writes: config.json, weights as
safetensors, the recipe and the model card); ``weights/index.json`` lists them, and the plugin registers them
in the pretrained index, so ``milzoo.load_pretrained("NAME")`` loads them with no network.
"""
