"""Repository-wide pytest set-up.

Tests run with one torch thread: the CI machines have 2 cores, and torch's
thread pool contending with itself makes small-tensor tests several times slower.
"""

import os

import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
torch.set_num_threads(1)
