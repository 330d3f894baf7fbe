"""torch.distributed support for ``torchrun ... -m milzoo run``.

Single-process runs never touch this module's process group.
"""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def maybe_distributed():
    """Yield None for a plain run; a :class:`Distributed` when launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield None
        return
    raise NotImplementedError("distributed training is not available yet")
