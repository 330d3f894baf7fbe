"""An example milzoo plugin: log-sum-exp (LSE) MIL pooling.

Keep this module light: milzoo imports ``milzoo_example_pooling.plugin`` at
start-up, and the hooks there import the component classes only when called.
"""

__version__ = "0.1.0"
