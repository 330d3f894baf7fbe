"""Forward+backward time and peak memory of every pooling on one large bag.

Each case (pooling x bag size) runs in a fresh subprocess so that memory held
by an earlier case cannot hide a later one.  In the worker:

1. import torch and milzoo, build the pooling with its default options
   (``in_dim = 1024``, 2 classes) and its default loss (bound to a tiny
   dataset), and create the bag ``[1, n, 1024]`` (the features are the data:
   they are *not* counted);
2. one warm-up step on a 64-instance bag (lazy initialisation, first-call
   costs);
3. reset the process's peak-RSS mark (``/proc/self/clear_refs``, Linux) and
   record the current RSS as the baseline; run one training step: forward in
   training mode, ``after_forward``, the default loss, ``backward()``;
   **extra memory = peak RSS (VmHWM) - baseline**.  This is measured on the
   first full-size step, before the allocator holds any freed memory.  Torch's
   CPU allocations are invisible to ``tracemalloc``; RSS sees them.  Where
   ``clear_refs`` is not available the worker falls back to
   ``getrusage(RUSAGE_SELF).ru_maxrss`` (which can only over-estimate);
4. time further steps and report the median.

The features do not require a gradient (pre-extracted WSI features with a
frozen extractor, the case where bags are this large); ``--input-grad`` adds
it (then ``n x 1024`` floats of ``h.grad`` are part of the extra memory).  A
pooling without trainable parameters (RGMIL with its default frozen regressor)
always gets feature gradients, since only the encoder would learn.

A separate scan (``--scan-n``, default 4096 instances) records the shape of
every tensor an operator creates in a forward+backward step (a
``TorchDispatchMode``; views are skipped, they allocate nothing) and reports
the largest one and whether any tensor has two dimensions of at least the
bag size, i.e. an ``n x n`` matrix (or larger, after padding).

    .venv/bin/python benchmarks/pooling_scale.py                      # all poolings, 1k/10k/50k
    .venv/bin/python benchmarks/pooling_scale.py --only abmil transmil --sizes 1000 10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

#: label -> (registry name, options); defaults otherwise (the WSI-scale settings of each method)
POOLINGS: dict[str, tuple[str, dict]] = {
    "abmil": ("abmil", {}),
    "abmil_gated": ("abmil", {"gated": True}),
    "dsmil": ("dsmil", {}),
    "dtfd": ("dtfd", {}),
    "transmil": ("transmil", {}),
    "demil": ("demil", {}),
    "rgmil": ("rgmil", {}),
    "psatt": ("psatt", {}),
    "mean": ("mean", {}),
    "max": ("max", {}),
    "clam_sb": ("clam_sb", {}),
    "clam_mb": ("clam_mb", {}),
    "vit_mil": ("vit_mil", {}),
    "ilra": ("ilra", {}),
    "rrt": ("rrt", {}),
    "wikg": ("wikg", {}),
}
ABMIL_FAMILY = {"abmil", "abmil_gated", "dsmil", "dtfd", "demil", "rgmil", "psatt", "mean", "max", "clam_sb", "clam_mb"}
GIB = 1024**3
DIM = 1024


# --------------------------------------------------------------------------- worker


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _setup(label: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    from milzoo import registry
    from milzoo.datasets.batch import Bag
    from milzoo.model.build import build_components
    from milzoo.datasets.base import BagListDataset

    name, options = POOLINGS[label]
    model = build_components({"name": "identity"}, {"name": name, **options}, (DIM,), 2)
    pool = model.pooling
    loss_name = getattr(type(pool), "default_loss", "bag_ce")
    loss_cls = registry.get_component("loss", loss_name)
    loss = loss_cls(loss_cls.Config(), 2)
    tiny = BagListDataset([Bag(torch.randn(3, DIM), y, f"b{y}", index=y) for y in (0, 1)], ["neg", "pos"])
    loss.bind(model, tiny)
    model.train()
    return torch, model, pool, loss


def _step(torch, pool, loss, x, mask, batch, state):
    out = pool(x, mask)
    out.features = x
    with torch.no_grad():
        pool.after_forward(out, batch)
    total = loss(out, batch, state).total
    total.backward()
    return out


def _make_batch(torch, n: int, input_grad: bool, seed: int = 0):
    from milzoo.datasets.batch import MILBatch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, DIM, generator=g)
    if input_grad:
        x.requires_grad_(True)
    mask = torch.ones(1, n, dtype=torch.bool)
    batch = MILBatch(x=x, mask=mask, y=torch.tensor([1]), index=torch.tensor([1]), bag_ids=["bag"])
    return x, mask, batch


def _needs_input_grad(model) -> bool:
    """A pooling without trainable parameters (RGMIL's default frozen regressor) trains only the encoder."""
    return not any(p.requires_grad for p in model.pooling.parameters())


def worker(label: str, n: int, repeats: int, threads: int, input_grad: bool) -> dict:
    torch, model, pool, loss = _setup(label, threads)
    input_grad = input_grad or _needs_input_grad(model)
    from milzoo.components.output import TrainState

    state = TrainState(epoch=1, num_epochs=10)
    torch.manual_seed(0)
    xs, ms, bs = _make_batch(torch, 64, input_grad, seed=1)
    _step(torch, pool, loss, xs, ms, bs, state)
    model.zero_grad(set_to_none=True)
    x, mask, batch = _make_batch(torch, n, input_grad)
    del xs, ms, bs

    exact = _reset_hwm()
    base = _rss_bytes()
    base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    out = _step(torch, pool, loss, x, mask, batch, state)
    first = time.perf_counter() - t0
    peak = _hwm_bytes() if exact else None
    if peak is None:
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, base_max)
    del out
    model.zero_grad(set_to_none=True)
    x.grad = None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = _step(torch, pool, loss, x, mask, batch, state)
        times.append(time.perf_counter() - t0)
        del out
        model.zero_grad(set_to_none=True)
        x.grad = None
    return {"pooling": label, "n": n, "time_s": statistics.median(times) if times else first, "first_s": first,
            "extra_bytes": max(0, peak - base), "exact_peak": exact, "repeats": len(times), "input_grad": input_grad}


def scan(label: str, n: int, threads: int) -> dict:
    """Record every tensor shape created in one forward+backward on an n-instance bag."""
    torch, model, pool, loss = _setup(label, threads)
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from milzoo.components.output import TrainState

    shapes: list[tuple[str, tuple[int, ...]]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            res = func(*args, **(kwargs or {}))
            if getattr(func, "is_view", False):
                return res  # views allocate nothing
            for t in tree_flatten(res)[0]:
                if isinstance(t, torch.Tensor):
                    shapes.append((str(func), tuple(t.shape)))
            return res

    x, mask, batch = _make_batch(torch, n, _needs_input_grad(model))
    torch.manual_seed(0)
    with Record():
        _step(torch, pool, loss, x, mask, batch, TrainState(epoch=1, num_epochs=10))
    import math

    biggest = max(shapes, key=lambda s: math.prod(s[1]))
    square = [s for s in shapes if sum(1 for d in s[1] if d >= n) >= 2]
    return {"pooling": label, "n": n, "largest_shape": list(biggest[1]), "largest_op": biggest[0],
            "largest_per_instance": math.prod(biggest[1]) / n,
            "n_by_n": [f"{op} {list(shape)}" for op, shape in square[:3]], "n_by_n_count": len(square)}


# --------------------------------------------------------------------------- driver


def _run_case(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {p.returncode}: {tail[0][:200]}", "children_maxrss": usage.ru_maxrss * 1024}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _fmt_bytes(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB / 2 else f"{b / 1024**2:.0f} MiB"


def _goal(label: str, n: int, extra: float) -> str:
    if n < 50_000:
        return ""
    if label == "transmil":
        return "ok (< 6 GiB)" if extra < 6 * GIB else "MISSED (>= 6 GiB)"
    if label in ABMIL_FAMILY:
        return "ok (< 1 GiB)" if extra < GIB else "MISSED (>= 1 GiB)"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=sorted(POOLINGS), default=None)
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 10_000, 50_000])
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each worker (the machine has 2 cores)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps after the measured one (1 at >= 50k)")
    ap.add_argument("--scan-n", type=int, default=4096, help="bag size of the n x n scan (0 to skip)")
    ap.add_argument("--input-grad", action="store_true", help="the features require a gradient too")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--worker", nargs=2, metavar=("POOLING", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--scan", nargs=2, metavar=("POOLING", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        label, n = args.worker[0], int(args.worker[1])
        reps = 1 if n >= 50_000 else args.repeats
        print(json.dumps(worker(label, n, reps, args.threads, args.input_grad)))
        return 0
    if args.scan:
        if int(args.scan[1]) <= 2 * DIM:
            ap.error(f"--scan-n must exceed 2 x {DIM} so that feature-sized dimensions are not mistaken for bag-sized ones")
        print(json.dumps(scan(args.scan[0], int(args.scan[1]), args.threads)))
        return 0

    if args.scan_n and args.scan_n <= 2 * DIM:
        ap.error(f"--scan-n must exceed 2 x {DIM} (or be 0) so that feature-sized dimensions cannot pass for bag-sized ones")
    labels = args.only or list(POOLINGS)
    rows, scans = [], []
    for label in labels:
        for n in args.sizes:
            extra = ["--threads", str(args.threads), "--repeats", str(args.repeats)]
            if args.input_grad:
                extra.append("--input-grad")
            r = _run_case(["--worker", label, str(n), *extra], args.timeout)
            r.setdefault("pooling", label)
            r.setdefault("n", n)
            rows.append(r)
            msg = r.get("error") or f"{r['time_s']:.3f}s, +{_fmt_bytes(r['extra_bytes'])}"
            print(f"  {label} n={n}: {msg}", file=sys.stderr, flush=True)
        if args.scan_n:
            s = _run_case(["--scan", label, str(args.scan_n), "--threads", str(args.threads)], args.timeout)
            s.setdefault("pooling", label)
            scans.append(s)

    import torch

    print(f"One bag of n instances x {DIM} features, default options, 2 classes, forward + after_forward + default "
          f"loss + backward; features {'with' if args.input_grad else 'without'} gradient; "
          f"{args.threads} torch thread(s); torch {torch.__version__} on {platform.machine()}, {os.cpu_count()} CPUs")
    print()
    print("| pooling | n | fwd+bwd time | extra peak memory (RSS) | goal at 50k |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['pooling']} | {r['n']:,} | {r['error']} | | |")
            continue
        flag = " (features with gradient)" if r.get("input_grad") and not args.input_grad else ""
        print(f"| {r['pooling']} | {r['n']:,} | {r['time_s']:.3f} s | {_fmt_bytes(r['extra_bytes'])}{flag} | "
              f"{_goal(r['pooling'], r['n'], r['extra_bytes'])} |")
    if scans:
        print()
        print(f"n x n scan: every tensor created in one training step on a bag of {args.scan_n} instances")
        print()
        print("| pooling | largest tensor | elements per instance | tensors with two dims >= n |")
        print("|---|---|---|---|")
        for s in scans:
            if "error" in s:
                print(f"| {s['pooling']} | {s['error']} | | |")
                continue
            nn_ = "none" if not s["n_by_n_count"] else f"{s['n_by_n_count']}: " + "; ".join(s["n_by_n"])
            print(f"| {s['pooling']} | {s['largest_shape']} ({s['largest_op']}) | {s['largest_per_instance']:.0f} | "
                  f"{nn_} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "scans": scans}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
