"""Per-epoch progress of a fold: a tqdm bar on a terminal, one plain line per epoch otherwise.

On a pipe or a log file (``milzoo run ... > log.txt 2>&1``, Slurm, nohup) a bar's
carriage-return redraws pile up into one endless line; there each finished epoch
is one line instead, e.g. ``fold 0 epoch 3/40  loss 0.512  acc 0.800  (1.2s)``.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class EpochProgress:
    """``update(postfix)`` once per finished epoch, then ``close()``."""

    def __init__(self, total: int, initial: int, desc: str, stream: IO[str] | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.done, self.desc = total, initial, desc
        self._t0 = time.perf_counter()
        self._bar = None
        if _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                             file=self.stream)

    def update(self, postfix: dict[str, Any]) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.set_postfix(**postfix)
            self._bar.update(1)
            return
        now = time.perf_counter()
        shown = "  ".join(f"{k} {v}" for k, v in postfix.items())
        self.stream.write(f"{self.desc} epoch {self.done}/{self.total}  {shown}  ({now - self._t0:.1f}s)\n")
        self.stream.flush()
        self._t0 = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
