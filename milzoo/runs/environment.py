"""What a run directory records about the machine it ran on: versions of milzoo, libraries and plugins, and the
hardware (CPU model and instruction set, cores, GPUs): float32 results differ between CPU types, so a table
built from run directories must be able to tell which machine each came from."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

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


#: CPU features that change which kernels torch runs, and so float32 rounding and speed
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _gpu_names() -> list[str]:
    """The GPUs' names without initialising CUDA (a run may still fork its workers): from the NVIDIA driver's
    files on Linux, else from torch when CUDA is initialised already."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            line = next((l for l in info.read_text(errors="replace").splitlines() if l.startswith("Model:")), "")
        except OSError:
            continue
        if line:
            names.append(line.split(":", 1)[1].strip())
    if not names and torch.cuda.is_initialized():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return names


def machine() -> dict:
    """The hardware of this start: CPU model, the instruction set torch's CPU kernels use, the CPU features
    that matter to them, cores, torch's threads and the GPUs."""
    text = _cpuinfo()
    model = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "")
    flags = set(next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), []))
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": _gpu_names(),
    }


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
        "machine": machine(),
    }
