"""Version and environment records for run directories and checkpoints."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
from pathlib import Path


def dist_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def milzoo_version() -> str:
    return dist_version("milzoo") or "0+unknown"


def git_sha(path: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path or Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    from milzoo import plugins

    libs = {n: dist_version(n) for n in ("torch", "torchvision", "numpy", "pydantic", "pluggy", "safetensors",
                                         "huggingface-hub", "scikit-learn", "fsspec")}
    return {
        "milzoo": milzoo_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libs,
        "plugins": [r.to_dict() for r in plugins.plugin_records()],
        "git_sha": git_sha(),
    }
