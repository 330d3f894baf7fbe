"""Repository-wide pytest set-up (the core's tests and every plugin's: pytest loads this file for both).

Tests run with one torch thread: the CI machines have 2 cores, and torch's
thread pool contending with itself makes small-tensor tests several times slower.
A test that changes the thread count (a run with ``train.threads``) gets it back
to one for the next test.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip where torch sees no CUDA GPU (``pytest -m cuda`` selects only them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run benchmarks/gpu_check.py on one)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
