"""One prepared GPU check: everything milzoo has never measured on a GPU, in one call of at most ~8 minutes.

Sections (one summary table at the end, also written as JSON):

1. the CUDA-only tests (``pytest -m cuda`` on the files that hold them);
2. MIL-mode vs supervised images/s with the same encoder, precision and device (``psmil_throughput``):
   ``cnn2`` at 1x28x28 and ``resnet18`` at 3x32x32 (goal >= 0.9 on a GPU);
3. a CIFAR-10-shaped PSMIL epoch (10,000 bags x 64 instances x 3 views, synthetic uint8 images of CIFAR
   shape kept on the device, resnet18, PSAtt + PSAli, the real ``Trainer.train_epoch``), timed for a fixed
   wall budget: measured bags/s and the epoch time they imply (goal < 60 s on an H100/H200);
4. a CAMELYON16-scale WSI epoch (270 bags of 8,000 x 1024 features on the device), ABMIL and TransMIL,
   with peak GPU memory;
5. a 1-GPU ``torchrun`` (NCCL) run of a tiny recipe, and a checkpoint saved from the GPU, loaded on the CPU
   and predicted there: the weights must be bit-identical and the CPU predictions identical to those of the
   GPU-trained model moved to the CPU.

``--dry-run`` runs the same code at tiny sizes on the CPU (gloo instead of NCCL); ``make test`` runs it, so
the script cannot rot.  It writes to a temporary folder unless ``--out`` is given.

On the device machine, in one call (torch may be missing there: install from the repository's own
pyproject; the machine has no network, so that works only from wheels carried in ``.whl``, see
/work/.library/device/README.md)::

    python3 -c 'import torch' 2>/dev/null || pip install -q --no-index .whl/*.whl;
    pip install -q --no-deps -e . $(printf -- '-e %s ' plugins/milzoo-*) &&
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT

(timeout_s 600; the JSON ``gpu_check.json`` comes back under $OUT; copy it to benchmarks/results/gpu/.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

#: the files holding the tests marked ``cuda``
CUDA_TEST_FILES = ["tests/test_trainer_steps.py", "plugins/milzoo-wsi/tests/test_resident_slides.py",
                   "plugins/milzoo-vision/tests/test_encoders.py", "plugins/milzoo-psmil/tests/test_psmil_step.py",
                   "tests/test_step_capture.py"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- 1. tests
def cuda_tests(dry: bool) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:randomly", *CUDA_TEST_FILES],
                          cwd=ROOT, capture_output=True, text=True)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    ok = proc.returncode in (0, 5) if dry else proc.returncode == 0  # 5: all deselected/skipped
    return {"ok": ok, "summary": last, "time_s": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------- 2. MIL vs supervised
#: the MIL step's two forms: eager, and captured (``train.compile = "reduce-overhead"``: CUDA graphs on a GPU)
STEP_MODES = {"eager": False, "captured": "reduce-overhead"}


def _backend(dry: bool):
    """The dry run compiles with "aot_eager" (dynamo's capture, no code generation: seconds on a CPU)."""
    return "aot_eager" if dry else None


def throughput(dry: bool, device: torch.device, modes: list[str]) -> list[dict]:
    import psmil_throughput as pt
    from milzoo.train.settings import resolve_precision

    prec = resolve_precision("auto", device)
    rows = []
    for enc, shape in (("cnn2", [1, 28, 28]), ("resnet18", [3, 32, 32])):
        for mode in modes:
            if dry and mode != "eager" and enc != "cnn2":
                continue  # the dry run checks the captured path once
            args = SimpleNamespace(encoder=enc, shape=shape, classes=10, bag_size=8 if dry else 64, views=3,
                                   steps=2 if dry else 10, rounds=1 if dry else 5, device=str(device),
                                   compile=STEP_MODES[mode])
            r = pt.measure(args, prec, prec != "fp32", pt.default_bags_per_step(device), device,
                           compile_backend=_backend(dry))
            r["goal"] = ">= 0.9"
            rows.append(r)
    return rows


# --------------------------------------------------------------------------- 3. PSMIL CIFAR epoch
def psmil_epoch(dry: bool, device: torch.device, budget_s: float, mode: str = "eager") -> dict:
    import psmil_throughput as pt
    from milzoo.recipe import load_recipe
    from milzoo.datasets import FoldData
    from milzoo.train import Trainer

    n_bags, bag = (24, 8) if dry else (10_000, 64)
    # the dry run: cnn2, whose capture takes seconds on a CPU (resnet18's runs through section 2 there)
    encoder, shape = ("cnn2", (1, 28, 28)) if dry else ("resnet18", (3, 32, 32))
    ds = pt.make_dataset(n_bags, bag, shape, 10)
    recipe = load_recipe({
        "name": "gpu_check_psmil", "data": {"name": "cifar10_bags", "root": "/nonexistent"},
        "encoder": {"name": encoder}, "augment": {"name": "mil_views", "num_views": 3},
        "pooling": {"name": "psatt"}, "loss": [{"name": "bag_ce"}, {"name": "psali", "freeze_encoder_epochs": 0}],
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        "train": {"epochs": 20, "batch_size": "auto", "device": str(device), "precision": "auto",
                  "channels_last": True, "grad_clip": 5.0, "progress": False, "compile": STEP_MODES[mode]},
    })
    chunk = 8 if dry else 400
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(recipe, FoldData(0, ds, None, {}), Path(tmp), emit=lambda r: None)
        if tr.compiled_step is not None and dry:
            from milzoo.train._compiled import CompiledStep

            tr.compiled_step = CompiledStep(tr, recipe.root.train.compile, backend=_backend(dry))
        resident_ok = tr._resident_split(ds) is not None
        start = 0

        def part():
            nonlocal start
            sub = ds.subset(range(start, start + chunk))
            start = (start + chunk) % (n_bags - chunk + 1)
            tr.data = FoldData(0, sub, None, {})
            tr.train_epoch(1)

        t_warm = time.perf_counter()
        part()  # warm-up: cuDNN autotuning, allocator, prototype initialisation (and the step's compilation)
        sync(device)
        warmup_s = time.perf_counter() - t_warm
        done, t0 = 0, time.perf_counter()
        while True:
            part()
            done += chunk
            sync(device)
            if time.perf_counter() - t0 >= budget_s:
                break
        secs = time.perf_counter() - t0
    bps = done / secs
    import psmil_throughput as pt

    return {"mil_step": mode, "warmup_s": round(warmup_s, 1), **pt._capture_info(tr),
            "bags": n_bags, "bag_size": bag, "views": 3, "encoder": "resnet18 (32x32, no resize)" if not dry else encoder,
            "precision": tr.precision, "bags_per_step": tr.batch_size, "resident": resident_ok,
            "timed_bags": done, "timed_s": round(secs, 2), "bags_per_s": round(bps, 2),
            "implied_epoch_s": round(n_bags / bps, 1), "goal": "epoch < 60 s (H100/H200)",
            "note": "implied from the measured bags/s, not a full epoch"}


# --------------------------------------------------------------------------- 4. WSI epoch
class _DeviceSlides:
    """Synthetic slide features made on the device (no host copy); a resident split for the trainer."""

    def __init__(self, n, length, dim, device, seed=0):
        from milzoo.datasets.base import MILDataset

        g = torch.Generator(device=device).manual_seed(seed)
        self.x = [torch.randn(length, dim, device=device, generator=g) for _ in range(n)]
        self.y = [i % 2 for i in range(n)]
        outer = self

        class Split:
            bag_ids = [f"slide{i}" for i in range(n)]

            def batch(self, rows, rows_dev):
                from milzoo.datasets.batch import Bag, collate_bags

                return collate_bags([Bag(outer.x[r], outer.y[r], self.bag_ids[r], index=r) for r in rows])

        class DS(MILDataset):
            class_names = ["normal", "tumor"]
            instance_shape = (dim,)

            def __len__(self):
                return n

            @property
            def labels(self):
                return np.asarray(outer.y)

            def resident_nbytes(self, seen):
                return 0

            def to_resident(self, device, moved):
                return Split()

        self.ds = DS()


def wsi_epoch(dry: bool, device: torch.device) -> list[dict]:
    from milzoo.recipe import load_recipe
    from milzoo.datasets import FoldData
    from milzoo.train import Trainer

    n, length, dim = (6, 200, 64) if dry else (270, 8000, 1024)
    slides = _DeviceSlides(n, length, dim, device)
    rows = []
    # the full run uses TransMIL's defaults (256 landmarks); the dry run 16, or its CPU time is all TransMIL
    for pooling in ({"name": "abmil"}, {"name": "transmil", **({"num_landmarks": 16} if dry else {})}):
        recipe = load_recipe({
            "name": "gpu_check_wsi", "data": {"name": "classic", "dataset": "musk1"},  # validated only
            "encoder": {"name": "mlp", "dims": [512]}, "pooling": pooling, "loss": [{"name": "bag_ce"}],
            "optim": {"name": "adam", "lr": 2e-4}, "train": {"epochs": 2, "batch_size": 1, "device": str(device),
                                                             "precision": "auto", "progress": False},
        })
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with tempfile.TemporaryDirectory() as tmp:
            tr = Trainer(recipe, FoldData(0, slides.ds, None, {}), Path(tmp), emit=lambda r: None)
            sync(device)
            t0 = time.perf_counter()
            stats = tr.train_epoch(0)
            sync(device)
            secs = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        rows.append({"pooling": pooling["name"], "bags": n, "instances": length, "dim": dim, "precision": tr.precision,
                     "epoch_s": round(secs, 2), "loss": round(stats["loss"], 4),
                     "peak_gpu_gib": None if peak is None else round(peak, 2)})
    return rows


# --------------------------------------------------------------------------- 5. torchrun + checkpoint
def _toy_csv(path: Path, n_bags=24, n_feat=6, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(n_bags):
        y = b % 2
        x = rng.normal(0, 1, size=(int(rng.integers(2, 7)), n_feat))
        if y:
            x[0, 0] += 4.0
        rows += [[y, b + 1, *inst] for inst in x]
    np.savetxt(path, np.array(rows), delimiter=",", fmt="%.6g")
    return path


def _toy_recipe(csv: Path, device: str) -> dict:
    return {"name": "gpu_check_tiny", "seed": 0, "data": {"name": "classic", "path": str(csv)},
            "encoder": {"name": "mlp", "dims": [16]}, "pooling": {"name": "abmil", "attn_hidden": 8},
            "loss": [{"name": "bag_ce"}], "optim": {"name": "adam", "lr": 0.01},
            "train": {"epochs": 3, "batch_size": 4, "device": device, "progress": False},
            "protocol": {"kind": "cv", "folds": 2}}


def torchrun_and_checkpoint(dry: bool, device: torch.device, work: Path) -> dict:
    import tomli_w

    from milzoo import checkpoint as ckpt
    from milzoo.datasets.batch import collate_bags
    from milzoo.model.build import build_dataset
    from milzoo.recipe import load_recipe
    from milzoo.runs.runner import run

    csv = _toy_csv(work / "toy.csv")
    path = work / "tiny.toml"
    path.write_text(tomli_w.dumps(_toy_recipe(csv, "auto")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if device.type != "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on the CPU
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           "-m", "milzoo", "run", str(path), "--out", str(work / "ddp"), "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    summary = work / "ddp" / "summary.json"
    out = {"torchrun_ok": proc.returncode == 0 and summary.exists(),
           "torchrun_backend": "nccl" if device.type == "cuda" else "gloo",
           "torchrun_s": round(time.perf_counter() - t0, 1)}
    if not out["torchrun_ok"]:
        out["torchrun_error"] = (proc.stderr or proc.stdout)[-800:]
    # a checkpoint saved from the training device, loaded and predicted on the CPU
    recipe = load_recipe(_toy_recipe(csv, str(device)))
    run(recipe, out=work / "ckpt", overwrite=True, progress=False, fold=0)
    gpu_model = ckpt.load_model(work / "ckpt" / "fold-00" / "last")  # on the CPU, as saved
    splits = build_dataset(recipe)
    data = next(iter(splits.values()))
    bags = [data[i] for i in range(min(8, len(data)))]
    batch = collate_bags(bags)
    trained = gpu_model.to(device)
    with torch.no_grad():
        on_dev = trained.predict(batch.to(device)).bag_probs.float().cpu()
    trained.to("cpu")
    cpu_model = ckpt.load_model(work / "ckpt" / "fold-00" / "last")
    same_weights = all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(),
                                                           cpu_model.state_dict().values()))
    with torch.no_grad():
        p_cpu = cpu_model.predict(batch).bag_probs
        p_ref = trained.predict(batch).bag_probs
    out.update(checkpoint_same_weights=same_weights, checkpoint_cpu_predictions_identical=bool(torch.equal(p_cpu, p_ref)),
               checkpoint_max_abs_diff_vs_device=float((p_cpu - on_dev).abs().max()))
    return out


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", "--cpu", dest="dry", action="store_true", help="tiny sizes on the CPU (CI)")
    p.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json (default: a temporary one)")
    p.add_argument("--budget", type=float, default=90.0, help="seconds of timed PSMIL training (section 3)")
    p.add_argument("--skip", nargs="*", default=[], choices=["tests", "throughput", "psmil", "wsi", "dist"])
    p.add_argument("--modes", nargs="*", default=list(STEP_MODES), choices=list(STEP_MODES),
                   help="the MIL step's forms timed in sections 2 and 3: eager, captured (train.compile = "
                   "'reduce-overhead')")
    args = p.parse_args(argv)
    device = torch.device("cpu") if args.dry else torch.device("cuda")
    if not args.dry and not torch.cuda.is_available():
        print("no CUDA GPU here; use --dry-run for the CPU check", file=sys.stderr)
        return 2
    if args.dry:
        torch.set_num_threads(1)
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)",
                 "torch": torch.__version__, "dry_run": args.dry, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    budget = 0.5 if args.dry else args.budget
    steps = [("tests", lambda: cuda_tests(args.dry)), ("throughput", lambda: throughput(args.dry, device, args.modes)),
             ("psmil", lambda: [psmil_epoch(args.dry, device, budget, m) for m in args.modes]),
             ("wsi", lambda: wsi_epoch(args.dry, device))]
    with tempfile.TemporaryDirectory() as work:
        steps.append(("dist", lambda: torchrun_and_checkpoint(args.dry, device, Path(work))))
        for name, fn in steps:
            if name in args.skip:
                continue
            t0 = time.perf_counter()
            try:
                res[name] = fn()
            except Exception as exc:  # noqa: BLE001 - one failing section must not hide the others
                res[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"[{name}] {time.perf_counter() - t0:.1f} s: {json.dumps(res[name])}", flush=True)
            (out_dir / "gpu_check.json").write_text(json.dumps(res, indent=1))
    print_table(res)
    print(f"JSON: {out_dir / 'gpu_check.json'}")
    failed = [k for k, v in res.items() if isinstance(v, dict) and ("error" in v or v.get("ok") is False
                                                                   or v.get("torchrun_ok") is False)]
    return 1 if failed else 0


def print_table(res: dict) -> None:
    print(f"\n| check | result ({res['device']}, torch {res['torch']}) |\n|---|---|")
    t = res.get("tests", {})
    print(f"| CUDA tests | {t.get('summary', t.get('error', '-'))} |")
    for r in res.get("throughput", []) if isinstance(res.get("throughput"), list) else []:
        print(f"| MIL ({r.get('mil_step', 'eager')})/supervised {r['encoder']} {r['precision']} {r['bags_per_step']} "
              f"bags/step | {r['mil_images_per_s']:.0f} / {r['supervised_images_per_s']:.0f} img/s = {r['ratio']:.3f} |")
    for ps in res.get("psmil", []) if isinstance(res.get("psmil"), list) else []:
        print(f"| PSMIL CIFAR-10 epoch, {ps['mil_step']} (implied) | {ps['bags_per_s']} bags/s -> "
              f"{ps['implied_epoch_s']} s (warm-up {ps['warmup_s']} s) |")
    for r in res.get("wsi", []) if isinstance(res.get("wsi"), list) else []:
        print(f"| WSI epoch {r['pooling']} ({r['bags']} x {r['instances']} x {r['dim']}) | {r['epoch_s']} s, "
              f"peak {r['peak_gpu_gib']} GiB |")
    d = res.get("dist", {})
    if "torchrun_ok" in d:
        print(f"| torchrun 1 process ({d['torchrun_backend']}) | {'ok' if d['torchrun_ok'] else 'FAILED'} |")
        print(f"| checkpoint device -> CPU | weights identical {d['checkpoint_same_weights']}, CPU predictions "
              f"identical {d['checkpoint_cpu_predictions_identical']}, max diff vs device "
              f"{d['checkpoint_max_abs_diff_vs_device']:.2e} |")
    for k, v in res.items():
        if isinstance(v, dict) and "error" in v:
            print(f"| {k} | ERROR {v['error']} |")


if __name__ == "__main__":
    sys.exit(main())
