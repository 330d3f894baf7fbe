"""milzoo-vision: image encoders, batched augmentations and synthetic image-bag benchmarks."""

__version__ = "0.1.0"
