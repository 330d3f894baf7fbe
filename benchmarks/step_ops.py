"""The training step as a GPU sees it, measured on a CPU: operators dispatched and host synchronisations.

At a few hundred small images per step a GPU step is bound by kernel launches and Python, and every host
synchronisation drains the GPU's queue.  This script counts, for one training step:

* **MIL**: the trainer's own step (``Trainer.train_epoch``: the batch gathered from the resident images,
  ``mil_views``, the encoder on every view, the pooling, its ``after_forward``, the losses, the loss sums,
  backward, gradient clipping, SGD), run as on a GPU (``Trainer.step_reads = False``: no per-step reads);
* **supervised**: the same encoder + a linear head + cross-entropy on the same number of images, already on
  the device, then backward and the same SGD (``psmil_throughput.SupBench.step``, the denominator of the
  MIL/supervised images/s ratio);

with :class:`milzoo.testing.dispatch.StepCounter`: every aten operator that reaches the dispatcher (forward,
backward, optimiser), the non-view ones (``kernels``), and the operations that force a host synchronisation
on a GPU (``.item()``/``bool(t)``, ``nonzero``, boolean-mask indexing, data-dependent shapes, copies to the
host, tensors made from host data on the device).  One step's counts are the difference between an epoch
of 3 steps and one of 2, so what happens once per epoch (reading the loss sums) cancels out.

Configurations: PSMIL (PSAtt + bag CE + PSAli, ``mil_views`` with 3 views), ABMIL and DSMIL (one unaugmented
view, as the FMNIST recipes), with ``cnn2`` on 1x28x28 images (``--encoder resnet18``: on 3x32x32 images, where
the strong views add RandAugment), 1 and 4 bags per step, fp32.  The counts do
not depend on the bag size (static shapes), so the default is a small one (8) that keeps the script under a
minute on a CPU.

    .venv/bin/python benchmarks/step_ops.py                 # one line per configuration
    .venv/bin/python benchmarks/step_ops.py --verbose       # + where each synchronisation is asked for
    .venv/bin/python benchmarks/step_ops.py --encoder resnet18   # CIFAR-10's shape (about 80 s)
    .venv/bin/python benchmarks/step_ops.py --configs --floor    # the leanest eager ABMIL step written out
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psmil_throughput as pt  # noqa: E402

#: encoder -> the image shape it is measured on (FMNIST's for cnn2, CIFAR-10's for resnet18)
SHAPES = {"cnn2": (1, 28, 28), "resnet18": (3, 32, 32)}

#: name -> (pooling, losses, augment): the three configurations of the issue
CONFIGS = {
    "psmil": ({"name": "psatt"}, [{"name": "bag_ce"}, {"name": "psali", "freeze_encoder_epochs": 0}],
              {"name": "mil_views", "num_views": 3}),
    "abmil": ({"name": "abmil"}, [{"name": "bag_ce"}], {"name": "mil_views", "num_views": 1, "flip": False, "pad": 0}),
    "dsmil": ({"name": "dsmil"}, [{"name": "dsmil"}], {"name": "mil_views", "num_views": 1, "flip": False, "pad": 0}),
}


def mil_recipe(config: str, bps: int, encoder: str = "cnn2", compile_mode=False):
    from milzoo.recipe import load_recipe

    pooling, losses, augment = CONFIGS[config]
    return load_recipe({
        "name": f"step_ops_{config}", "data": {"name": "fmnist_bags", "root": "/nonexistent"},  # bags synthetic
        "encoder": {"name": encoder}, "augment": augment, "pooling": pooling, "loss": losses,
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        "train": {"epochs": 20, "batch_size": bps, "device": "cpu", "precision": "fp32", "grad_clip": 5.0,
                  "progress": False, "compile": compile_mode},
    })


def mil_runner(config: str, bps: int, bag_size: int, shape, classes: int, compile_mode=False, captured=False,
               encoder: str = "cnn2"):
    """``run(n)``: one epoch of ``n`` steps of the trainer (epoch 1: encoder trainable, lambda_T > 0).

    ``captured``: the step as ``train.compile = "reduce-overhead"`` runs it on a GPU, where the compiled
    forward-and-losses and its backward are each one CUDA graph replay.  A CPU has no CUDA graphs, and
    torch.compile cannot run under a dispatch mode: the region is compiled with the ``aot_eager`` backend (the
    same graph boundaries, no code generation) and counted as two launches per graph: the replay and the copy
    of its inputs into the graph's buffers (the batch for the forward, the gradient seed for the backward);
    everything outside the graphs (batch, loss sums, clipping, optimiser) is counted operator by operator, as
    in the eager step.
    """
    from milzoo.datasets import FoldData
    from milzoo.testing.dispatch import StepCounter
    from milzoo.train import Trainer
    from milzoo.train._compiled import CompiledStep

    if captured:
        compile_mode = "reduce-overhead"

    data = {n: pt.make_dataset(bps * n, bag_size, shape, classes, seed=n) for n in (2, 3)}
    tmp = tempfile.TemporaryDirectory()
    torch.manual_seed(0)
    tr = Trainer(mil_recipe(config, bps, encoder, compile_mode=compile_mode), FoldData(0, data[3], None, {}),
                 Path(tmp.name), emit=lambda r: None)
    tr.step_reads = False  # the step a GPU runs: nothing read back per step
    if captured:
        tr.compiled_step = step = CompiledStep(tr, compile_mode, backend="aot_eager")
        compiled, backward = step.compiled, tr.amp.backward

        def as_one_graph(fn):
            def call(*args, **kwargs):
                counter = StepCounter.active()
                if counter is None:
                    return fn(*args, **kwargs)
                with counter.replayed(1, input_copies=1):
                    return fn(*args, **kwargs)
            return call

        step.compiled, tr.amp.backward = as_one_graph(compiled), as_one_graph(backward)

    def run(n: int) -> None:
        tr.data = FoldData(0, data[n], None, {})
        tr.train_epoch(1)

    run.keep = tmp  # the folder lives as long as the runner
    run.trainer = tr
    return run


def supervised_runner(bps: int, bag_size: int, views: int, shape, classes: int, encoder: str = "cnn2"):
    args = SimpleNamespace(encoder=encoder, steps=3)
    torch.manual_seed(0)
    sup = pt.SupBench(args, "fp32", False, bps * bag_size * views, shape, classes, torch.device("cpu"))

    def run(n: int) -> None:
        for s in range(n):
            sup.step(s)

    return run


def abmil_floor_runner(bps: int, bag_size: int, shape, classes: int, encoder: str = "cnn2", hidden: int = 128):
    """The leanest eager ABMIL step there can be, written out: the supervised step's encoder, images and SGD,
    with ABMIL's attention (Linear, tanh, Linear, softmax over each bag, weighted sum) before the linear head,
    and nothing else: no batch gather, no mask, no views, no clipping, no loss sums.  What its count exceeds the
    supervised step by is the attention's own forward, backward and optimiser work, which no rewrite of the
    trainer can remove; only a compiler fuses it (``--floor``)."""
    import torch.nn.functional as F

    args = SimpleNamespace(encoder=encoder, steps=3)
    torch.manual_seed(0)
    sup = pt.SupBench(args, "fp32", False, bps * bag_size, shape, classes, torch.device("cpu"))
    d = sup.head.in_features
    attn_v, attn_w = torch.nn.Linear(d, hidden), torch.nn.Linear(hidden, 1)
    sup.opt.add_param_group({"params": list(attn_v.parameters()) + list(attn_w.parameters())})
    labels = sup.y[:, :bps]

    def run(n: int) -> None:
        for s in range(n):
            h = sup.encoder(sup.x[s % sup.steps])                            # [B*N, d]
            a = torch.softmax(attn_w(torch.tanh(attn_v(h))).view(bps, bag_size), dim=1)
            z = torch.bmm(a.unsqueeze(1), h.view(bps, bag_size, d)).squeeze(1)
            loss = F.cross_entropy(sup.head(z), labels[s % sup.steps])
            sup.opt.zero_grad(set_to_none=True)
            loss.backward()
            sup.opt.step()

    return run


def measure(config: str, bps: int, bag_size: int, encoder: str = "cnn2", classes: int = 10, sites: bool = False,
            captured: bool = True) -> dict:
    from milzoo.testing.dispatch import count_per_step

    shape = SHAPES[encoder]
    views = CONFIGS[config][2]["num_views"]
    t0 = time.perf_counter()
    mil = count_per_step(mil_runner(config, bps, bag_size, shape, classes, encoder=encoder), sites=sites)
    sup = count_per_step(supervised_runner(bps, bag_size, views, shape, classes, encoder))
    cap = (count_per_step(mil_runner(config, bps, bag_size, shape, classes, captured=True, encoder=encoder))
           if captured else None)
    extra = {} if cap is None else {"captured_ops": cap.ops, "captured_ratio": round(cap.ops / sup.ops, 2),
                                    "captured_syncs_per_step": cap.syncs, "captured_by_op": cap.by_op}
    return {**extra,
        "config": config, "encoder": encoder, "shape": list(shape), "bags_per_step": bps, "bag_size": bag_size,
        "views": views,
        "images_per_step": bps * bag_size * views,
        "mil_ops": mil.ops, "supervised_ops": sup.ops, "ops_ratio": round(mil.ops / sup.ops, 2),
        "mil_kernels": mil.kernels, "supervised_kernels": sup.kernels,
        "kernels_ratio": round(mil.kernels / sup.kernels, 2),
        "syncs_per_step": mil.syncs, "supervised_syncs_per_step": sup.syncs,
        "sync_sites": mil.sync_sites, "mil_by_op": mil.by_op, "mil_by_site": mil.by_site, "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--encoder", nargs="*", default=["cnn2"], choices=list(SHAPES),
                   help="cnn2 on 1x28x28 (FMNIST; the default) and/or resnet18 on 3x32x32 (CIFAR-10)")
    p.add_argument("--bags-per-step", type=int, nargs="*", default=[1, 4])
    p.add_argument("--bag-size", type=int, default=8, help="instances per bag (the counts do not depend on it)")
    p.add_argument("--verbose", action="store_true", help="also list the synchronisations and the top operators")
    p.add_argument("--eager-only", action="store_true", help="skip the captured step (train.compile = "
                   "'reduce-overhead' as a GPU replays it; traced with torch.compile, a few seconds per row)")
    p.add_argument("--sites", action="store_true", help="with --verbose: the MIL step's operators per line of code")
    p.add_argument("--floor", action="store_true", help="also count the leanest eager ABMIL step written out "
                   "(no gather, mask, views, clipping or loss sums): how far a rewrite without a compiler could go")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, fp32, CPU; one training step as a GPU runs it", flush=True)
    rows = []
    for encoder, config, bps in itertools.product(args.encoder, args.configs, args.bags_per_step):
        r = measure(config, bps, args.bag_size, encoder, sites=args.sites, captured=not args.eager_only)
        rows.append(r)
        print(f"{encoder} {config} bags/step={bps} ({r['images_per_step']} images): mil_ops={r['mil_ops']} "
              f"supervised_ops={r['supervised_ops']} ops_ratio={r['ops_ratio']:.2f} "
              f"mil_kernels={r['mil_kernels']} supervised_kernels={r['supervised_kernels']} "
              f"kernels_ratio={r['kernels_ratio']:.2f} syncs_per_step={r['syncs_per_step']}"
              + ("" if "captured_ops" not in r else f" | captured: ops={r['captured_ops']} "
                 f"ops_ratio={r['captured_ratio']:.2f} syncs_per_step={r['captured_syncs_per_step']}"),
              flush=True)
        if args.verbose:
            for site, n in r["sync_sites"].items():
                print(f"    sync x{n}: {site}")
            top = ", ".join(f"{k} {v}" for k, v in list(r["mil_by_op"].items())[:12])
            print(f"    top operators: {top}")
            for site, n in r["mil_by_site"].items():
                print(f"    {n:4d} ops: {site}")
    if args.floor:
        from milzoo.testing.dispatch import count_per_step

        for encoder, bps in itertools.product(args.encoder, args.bags_per_step):
            shape = SHAPES[encoder]
            floor = count_per_step(abmil_floor_runner(bps, args.bag_size, shape, 10, encoder))
            sup = count_per_step(supervised_runner(bps, args.bag_size, 1, shape, 10, encoder))
            rows.append({"config": "abmil_floor", "encoder": encoder, "bags_per_step": bps, "mil_ops": floor.ops,
                         "supervised_ops": sup.ops, "ops_ratio": round(floor.ops / sup.ops, 2),
                         "mil_kernels": floor.kernels, "supervised_kernels": sup.kernels,
                         "kernels_ratio": round(floor.kernels / sup.kernels, 2), "syncs_per_step": floor.syncs})
            print(f"{encoder} abmil floor (written out) bags/step={bps}: mil_ops={floor.ops} supervised_ops={sup.ops} "
                  f"ops_ratio={floor.ops / sup.ops:.2f} mil_kernels={floor.kernels} "
                  f"supervised_kernels={sup.kernels} kernels_ratio={floor.kernels / sup.kernels:.2f} "
                  f"syncs_per_step={floor.syncs}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
