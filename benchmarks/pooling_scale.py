"""Forward+backward time and peak memory of every pooling on one large bag.

Each case (pooling x bag size) runs in a fresh subprocess so that memory held
by an earlier case cannot hide a later one.  In the worker:

1. import torch and milzoo, build the pooling with its default options
   (``in_dim = 1024``, 2 classes) and its default loss (bound to a tiny
   dataset), and create the bag ``[1, n, 1024]`` (the features are the data:
   they are *not* counted).  A pooling whose official model puts its input
   projection in front of it as a separate layer (RRT-MIL's ``patch_to_emb``,
   milzoo's ``mlp`` encoder, ``ENCODERS``) gets that encoder, and the step
   runs it too; every other pooling sees the features directly (the identity
   encoder), its own first layer included in the pooling;
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
4. time further steps and report the median (``--repeat-below S``: no
   further step when the measured one took ``S`` seconds or more; its time is
   then the one reported, with ``repeats = 0``).

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

A case that does not finish within ``--timeout`` seconds (setup, the warm-up
step, the measured step and the repeats) is recorded as timed out; with
``--json`` the file also records the CPU, torch, the thread count and the
load average before and after the run (``meta``).
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
#: label -> the encoder table of the official model, for poolings whose input projection is an encoder
ENCODERS: dict[str, dict] = {
    "rrt": {"name": "mlp", "dims": [512], "dropout": 0.25},  # the official patch_to_emb: Linear -> 512, ReLU, Dropout
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
    model = build_components(ENCODERS.get(label, {"name": "identity"}), {"name": name, **options}, (DIM,), 2)
    pool = model.pooling
    loss_name = getattr(type(pool), "default_loss", "bag_ce")
    loss_cls = registry.get_component("loss", loss_name)
    loss = loss_cls(loss_cls.Config(), 2)
    tiny = BagListDataset([Bag(torch.randn(3, DIM), y, f"b{y}", index=y) for y in (0, 1)], ["neg", "pos"])
    loss.bind(model, tiny)
    model.train()
    return torch, model, pool, loss


def _step(torch, pool, loss, x, mask, batch, state, encoder=None):
    h = x if encoder is None else encoder(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1)
    out = pool(h, mask)
    out.features = h
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


def _encoder(label: str, model):
    """The model's encoder when the label has one (``ENCODERS``), else None: the features go to the pooling."""
    return model.encoder if label in ENCODERS else None


def _needs_input_grad(model) -> bool:
    """A pooling without trainable parameters (RGMIL's default frozen regressor) trains only the encoder."""
    return not any(p.requires_grad for p in model.pooling.parameters())


def worker(label: str, n: int, repeats: int, threads: int, input_grad: bool, repeat_below: float | None = None) -> dict:
    torch, model, pool, loss = _setup(label, threads)
    enc = _encoder(label, model)
    input_grad = input_grad or _needs_input_grad(model)
    from milzoo.components.output import TrainState

    state = TrainState(epoch=1, num_epochs=10)
    torch.manual_seed(0)
    xs, ms, bs = _make_batch(torch, 64, input_grad, seed=1)
    _step(torch, pool, loss, xs, ms, bs, state, enc)
    model.zero_grad(set_to_none=True)
    x, mask, batch = _make_batch(torch, n, input_grad)
    del xs, ms, bs

    exact = _reset_hwm()
    base = _rss_bytes()
    base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    out = _step(torch, pool, loss, x, mask, batch, state, enc)
    first = time.perf_counter() - t0
    peak = _hwm_bytes() if exact else None
    if peak is None:
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, base_max)
    del out
    model.zero_grad(set_to_none=True)
    x.grad = None
    times = []
    if repeat_below is not None and first >= repeat_below:
        repeats = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = _step(torch, pool, loss, x, mask, batch, state, enc)
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
        _step(torch, pool, loss, x, mask, batch, TrainState(epoch=1, num_epochs=10), _encoder(label, model))
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


def _cpuinfo_field(key: str) -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.split(":")[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def _has_flag(flag: str) -> bool:
    return flag in _cpuinfo_field("flags").split()


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
    ap.add_argument("--repeat-below", type=float, default=None, metavar="S",
                    help="no timed repeat when the measured step took S seconds or more (its time is reported)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per case (one pooling at one size)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--worker", nargs=2, metavar=("POOLING", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--scan", nargs=2, metavar=("POOLING", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        label, n = args.worker[0], int(args.worker[1])
        reps = 1 if n >= 50_000 else args.repeats
        print(json.dumps(worker(label, n, reps, args.threads, args.input_grad, args.repeat_below)))
        return 0
    if args.scan:
        if int(args.scan[1]) <= 2 * DIM:
            ap.error(f"--scan-n must exceed 2 x {DIM} so that feature-sized dimensions are not mistaken for bag-sized ones")
        print(json.dumps(scan(args.scan[0], int(args.scan[1]), args.threads)))
        return 0

    if args.scan_n and args.scan_n <= 2 * DIM:
        ap.error(f"--scan-n must exceed 2 x {DIM} (or be 0) so that feature-sized dimensions cannot pass for bag-sized ones")
    labels = args.only or list(POOLINGS)
    load_before = os.getloadavg()
    rows, scans = [], []
    for label in labels:
        for n in args.sizes:
            extra = ["--threads", str(args.threads), "--repeats", str(args.repeats)]
            if args.repeat_below is not None:
                extra += ["--repeat-below", str(args.repeat_below)]
            if args.input_grad:
                extra.append("--input-grad")
            r = _run_case(["--worker", label, str(n), *extra], args.timeout)
            r.setdefault("pooling", label)
            r.setdefault("n", n)
            rows.append(r)
            if "error" in r and "timed out" in r["error"]:
                r["timeout_s"] = args.timeout
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
    if ENCODERS and set(labels) & set(ENCODERS):
        print()
        for label in sorted(set(labels) & set(ENCODERS)):
            print(f"{label}: with the encoder {ENCODERS[label]} in the step (its official input projection)")
    if args.json:
        meta = {"cpu": _cpu_model(), "avx512": _has_flag("avx512f"), "torch": torch.__version__,
                "machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                "input_grad": args.input_grad, "repeats": args.repeats, "repeat_below": args.repeat_below,
                "timeout_s": args.timeout, "scan_n": args.scan_n, "encoders": {k: v for k, v in ENCODERS.items()
                                                                              if k in labels},
                "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
                "command": " ".join([os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])])}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows, "scans": scans}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
