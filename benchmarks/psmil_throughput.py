"""MIL-mode vs plain supervised training throughput of the PSMIL image pipeline.

Measured in one process, with the same encoder, precision and device:

* **MIL mode** — the real training step of ``milzoo.train.trainer.Trainer.train_epoch``
  (collate -> ``mil_views`` augmentation -> encoder on every view of every
  instance in one call -> PSAtt -> prototype update -> bag CE + PSAli ->
  backward -> gradient clipping -> SGD step), on bags of ``--bag-size``
  instances x ``--views`` views, ``--bags-per-step`` bags per step.  Images/s
  counts **all views**: bags x bag_size x views per second.
* **supervised** — batches of images (already on the device) through the same
  encoder + a linear head + cross-entropy -> backward -> SGD step, with the
  same number of images per encoder call as the MIL step.

The two are timed in alternating rounds (the median round is reported) so that
load from other processes on a shared machine hits both alike.  The ratio
MIL / supervised is the number to watch (goal: >= 0.9 on CPU, >= 0.85 on GPU).

    .venv/bin/python benchmarks/psmil_throughput.py                     # fp32 and bf16+channels_last
    .venv/bin/python benchmarks/psmil_throughput.py --precision bf16 --bags-per-step 1 2 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from milzoo.recipe import load_recipe
from milzoo.datasets import FoldData
from milzoo.train import Trainer


def default_bags_per_step(device: torch.device) -> int:
    """The per-device default we recommend (docs/psmil.md): 1 bag (192 images) on CPU, 4 on a GPU."""
    from milzoo.train.settings import resolve_batch_size

    return resolve_batch_size("auto", device)


def make_dataset(n_bags: int, bag_size: int, shape: tuple[int, ...], k: int, seed: int = 0):
    from milzoo_vision.datasets import ImageBagDataset

    rng = np.random.default_rng(seed)
    n_img = max(n_bags * bag_size // 4, bag_size)
    images = torch.from_numpy(rng.integers(0, 256, size=(n_img, *shape), dtype=np.uint8))
    img_y = rng.integers(0, k, size=n_img)
    index = np.stack([rng.choice(n_img, size=bag_size, replace=False) for _ in range(n_bags)])
    labels = rng.integers(0, k, size=n_bags)
    return ImageBagDataset(images, index, img_y[index], labels, [str(c) for c in range(k)], "bench-")


def recipe_for(args, precision: str, channels_last: bool, bps: int):
    raw = {
        "name": "bench",
        "data": {"name": "fmnist_bags", "root": "/nonexistent"},  # validated only; the bags are synthetic
        "encoder": {"name": args.encoder},
        "augment": {"name": "mil_views", "num_views": args.views},
        "pooling": {"name": "psatt"},
        "loss": [{"name": "bag_ce"}, {"name": "psali", "freeze_encoder_epochs": 0}],
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        "train": {"epochs": 20, "batch_size": bps, "device": args.device, "precision": precision,
                  "channels_last": channels_last, "grad_clip": 5.0, "progress": False,
                  "compile": getattr(args, "compile", False) or False},
    }
    return load_recipe(raw)


class MILBench:
    """Drives ``Trainer.train_epoch`` (the real training path) over a fixed number of steps.

    With a compiled step (``args.compile`` = "step" or "reduce-overhead") the epoch stays fixed: PSAli's
    lambda_T changes with the epoch, and a second epoch value costs one more compilation (once per fold in a
    real run), which a timed round must not pay.  ``compile_backend`` replaces inductor (the CPU dry run of
    benchmarks/gpu_check.py uses "aot_eager": seconds instead of minutes).
    """

    def __init__(self, args, precision, channels_last, bps, shape, k, compile_backend=None):
        self.bps = bps
        self.ds = make_dataset(bps * args.steps, args.bag_size, shape, k)
        recipe = recipe_for(args, precision, channels_last, bps)
        self.tmp = tempfile.TemporaryDirectory()
        self.trainer = Trainer(recipe, FoldData(0, self.ds, None, {}), Path(self.tmp.name), emit=lambda r: None)
        self.compiled = self.trainer.compiled_step is not None
        if self.compiled and compile_backend is not None:
            from milzoo.train._compiled import CompiledStep

            self.trainer.compiled_step = CompiledStep(self.trainer, recipe.root.train.compile, backend=compile_backend)
        self.images_per_round = bps * args.steps * args.bag_size * args.views
        self.epoch = 1  # epoch >= 1: encoder trainable and lambda_T > 0, as in most of training

    def round(self) -> float:
        dev = self.trainer.device
        sync(dev)
        t0 = time.perf_counter()
        self.trainer.train_epoch(self.epoch)
        sync(dev)
        if not self.compiled:
            self.epoch = self.epoch % 9 + 1
        return self.images_per_round / (time.perf_counter() - t0)


class SupBench:
    """Plain supervised training of the same encoder on batches of images already on the device."""

    def __init__(self, args, precision, channels_last, batch, shape, k, device):
        from milzoo import registry

        enc_cls = registry.get_component("encoder", args.encoder)
        self.encoder = enc_cls(enc_cls.Config(), shape).to(device)
        with torch.no_grad():
            d = self.encoder(torch.zeros(2, *shape, device=device)).shape[-1]
        self.head = torch.nn.Linear(d, k).to(device)
        params = list(self.encoder.parameters()) + list(self.head.parameters())
        from milzoo.train.optim import SGD  # the trainer's class (torch's, without the compile guards)

        self.opt = SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4, foreach=True)
        g = torch.Generator().manual_seed(1)
        self.x = (torch.randint(0, 256, (args.steps, batch, *shape), generator=g).float() / 255).to(device)
        self.y = torch.randint(0, k, (args.steps, batch), generator=g).to(device)
        self.steps, self.batch, self.device = args.steps, batch, device
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.channels_last = channels_last
        self.encoder.train()

    def step(self, s: int) -> None:
        """One supervised step on the ``s``-th batch (benchmarks/step_ops.py counts its operators)."""
        x = self.x[s % self.steps]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp else torch.autocast(
            self.device.type, enabled=False)
        with ctx:
            logits = self.head(self.encoder(x))
        loss = F.cross_entropy(logits.float(), self.y[s % self.steps])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def round(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for s in range(self.steps):
            self.step(s)
        sync(self.device)
        return self.steps * self.batch / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args, precision: str, channels_last: bool, bps: int, device: torch.device,
            compile_backend=None) -> dict:
    shape = tuple(args.shape)
    torch.manual_seed(0)
    mil = MILBench(args, precision, channels_last, bps, shape, args.classes, compile_backend)
    sup = SupBench(args, precision, channels_last, bps * args.bag_size * args.views, shape, args.classes, device)
    t0 = time.perf_counter()
    mil.round()  # warm-up (allocator, kernels, first-bag prototype init; with a compiled step, its compilation)
    warmup_s = time.perf_counter() - t0
    sup.round()
    m, s = [], []
    for _ in range(args.rounds):
        m.append(mil.round())
        s.append(sup.round())
    mil_ips, sup_ips = statistics.median(m), statistics.median(s)
    return {
        "encoder": args.encoder, "device": str(device), "precision": precision, "channels_last": channels_last,
        "mil_step": getattr(args, "compile", False) or "eager", "mil_warmup_s": round(warmup_s, 1),
        **_capture_info(mil.trainer),
        "bags_per_step": bps, "bag_size": args.bag_size, "views": args.views,
        "images_per_step": bps * args.bag_size * args.views, "threads": torch.get_num_threads(),
        "mil_images_per_s": round(mil_ips, 1), "supervised_images_per_s": round(sup_ips, 1),
        "ratio": round(mil_ips / sup_ips, 3),
        "mil_rounds": [round(v, 1) for v in m], "supervised_rounds": [round(v, 1) for v in s],
    }


def _capture_info(tr) -> dict:
    """What the compiled step did (steps captured, why not), and inductor's CUDA-graph skips, if any."""
    step = tr.compiled_step
    if step is None:
        return {}
    info = {"captured_calls": step.calls, "capture_disabled": step.disabled}
    try:
        from torch._dynamo.utils import counters

        info["inductor_counters"] = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="cnn2")
    p.add_argument("--shape", type=int, nargs=3, default=[1, 28, 28], help="C H W (FMNIST: 1 28 28)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--bag-size", type=int, default=64)
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--bags-per-step", type=int, nargs="*", default=None,
                   help="one or more values (default: the per-device default, 1 on CPU, 4 on GPU)")
    p.add_argument("--precision", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"],
                   help="bf16/fp16 run with channels_last; fp32 without (the two reference settings)")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (median reported)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--compile", nargs="?", const=True, default=False, choices=[True, "encoder", "step", "reduce-overhead"],
                   help="train.compile on the MIL side: alone, the encoder (true); 'step' or 'reduce-overhead' "
                   "(the step captured as a CUDA graph on a GPU)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from milzoo.train.settings import resolve_device

    device = resolve_device(args.device)
    bpss = args.bags_per_step or [default_bags_per_step(device)]
    results = []
    for prec in args.precision:
        for bps in bpss:
            r = measure(args, prec, prec != "fp32", bps, device)
            results.append(r)
            print(f"{r['encoder']} {r['device']} {prec}{'+channels_last' if r['channels_last'] else ''} "
                  f"bags/step={bps} ({r['images_per_step']} images/step, {r['threads']} threads): "
                  f"MIL ({r['mil_step']}) {r['mil_images_per_s']:.0f} img/s, supervised {r['supervised_images_per_s']:.0f} img/s, "
                  f"ratio {r['ratio']:.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
