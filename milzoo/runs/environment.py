"""What a run directory records about the machine it ran on: versions of milzoo, libraries and plugins."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from milzoo._version import dist_version, milzoo_version
from milzoo.registry import plugin_records


def git_sha(path: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path or Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    libs = {n: dist_version(n) for n in ("torch", "torchvision", "numpy", "pydantic", "pluggy", "safetensors",
                                         "huggingface-hub", "scikit-learn", "fsspec")}
    return {
        "milzoo": milzoo_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libs,
        "plugins": [r.to_dict() for r in plugin_records()],
        "git_sha": git_sha(),
    }
