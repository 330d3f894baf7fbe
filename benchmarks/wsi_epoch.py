"""Epoch time of whole-slide MIL models through milzoo's training path, against a naive loop.

    python benchmarks/wsi_epoch.py                        # CAMELYON16 scale: 270 slides x ~8000 x 1024
    python benchmarks/wsi_epoch.py --slides 40            # smaller, for development
    python benchmarks/wsi_epoch.py --models none --big-bag 50000   # only the 50k-patch memory check

1. Generates (once; resumable, skipped when present) a synthetic CAMELYON16-scale feature set with
   ``milzoo_wsi.synthetic.make_synthetic_slides``: ``--slides`` slides, patch counts log-normal around
   ``--patches`` (a tenth to 4x of it), ``--dim``-d fp16 features in safetensors files, under
   ``--root`` (default /tmp/milzoo-bench; the full set is about 4.4 GB).
2. Loads it with the ``slides`` dataset (in-memory cache, float32 bags), as a recipe would.  The cache is
   float32 by default (``--cache-dtype``; what ``dtype = "auto"`` picks when the set fits in
   ``cache_max_gb``: 9.2 GB at full scale) or float16 (half the memory, one conversion per step).
3. Times one training epoch of ABMIL, DSMIL, DTFD-MIL and TransMIL through ``milzoo.train.trainer.Trainer``
   (the code ``milzoo run`` uses: DataLoader, collation, forward, loss, backward, optimiser step), one
   slide per step, the models' default options on the raw features (identity encoder; ``--encoder mlp``
   adds the recipes' 512-d adapter), Adam.  Models named in ``--subset`` (default TransMIL, seconds per
   slide on a CPU) are timed on N random slides and scaled to the epoch by patch count (labelled).
4. Times the naive loop in the same process: every epoch it reads each slide's file again, in fp32, and
   trains the same ABMIL model (same initial weights, same optimiser) one slide per step.  Two kinds of
   file (``--naive-formats``): the fp16 safetensors files milzoo trains from (converted to fp32 after
   reading: the naive loop's lower bound), and fp32 TRIDENT/CLAM-layout ``.h5`` copies read with h5py, the
   files a feature extractor gives a user and what those projects' loaders read every epoch.  The files
   are in the OS page cache after the first pass, which favours the naive loop; ``--naive-cold`` also
   runs it with every file evicted from the page cache before it is read.

Wall and CPU seconds (``time.process_time``, all threads) are both reported: on a shared machine the
wall time depends on the other processes, the CPU time much less.  ``--threads`` sets torch's CPU
threads (``--default-threads-too`` adds an ABMIL epoch with one thread per core for comparison).

``--big-bag N`` adds a memory check: one slide of N x dim patches goes through the same slides dataset
and trainer (one training step per model, in a fresh subprocess each) and the peak resident memory
above the state before the step is reported (Linux: the kernel's VmHWM, reset before the step).

Results go to stdout and, with ``--json PATH``, to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: pooling options per model (defaults of each method; identity encoder on the raw features)
MODELS = {
    "abmil": {"pooling": {"name": "abmil"}, "loss": [{"name": "bag_ce"}]},
    "psatt": {"pooling": {"name": "psatt"}, "loss": [{"name": "bag_ce"}]},
    "dsmil": {"pooling": {"name": "dsmil"}, "loss": [{"name": "dsmil"}]},
    "dtfd": {"pooling": {"name": "dtfd"}, "loss": [{"name": "dtfd"}]},
    "transmil": {"pooling": {"name": "transmil"}, "loss": [{"name": "bag_ce"}]},
}


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/milzoo-bench", help="where the synthetic sets live")
    ap.add_argument("--slides", type=int, default=270, help="number of slides (CAMELYON16 training set: 270)")
    ap.add_argument("--patches", type=int, default=8000, help="mean patches per slide")
    ap.add_argument("--dim", type=int, default=1024, help="feature dimension")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="abmil,dsmil,dtfd,transmil",
                    help=f"comma list of {','.join(MODELS)} ('none': only the --big-bag check)")
    ap.add_argument("--encoder", default="identity", choices=["identity", "mlp"],
                    help="identity (default) or the two-layer 512-d adapter of the WSI recipes")
    ap.add_argument("--cache-dtype", default="float32", choices=["float32", "float16"],
                    help="dtype of the in-memory cache the trainer reads (float32: what dtype='auto' picks when the "
                         "set fits in cache_max_gb; float16: half the memory, one conversion per step)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--default-threads-too", action="store_true",
                    help="with --threads: also time ABMIL with torch's default thread count")
    ap.add_argument("--subset", default="transmil:20", metavar="MODEL:N[,...]",
                    help="time these models on N random slides and scale to the epoch by patch count "
                         "(TransMIL takes seconds per slide on a CPU); '' for none")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    ap.add_argument("--naive-formats", default="safetensors,h5",
                    help="files the naive loop reads: safetensors (the fp16 files milzoo trains from) and/or h5 "
                         "(fp32 TRIDENT/CLAM-layout copies, written once next to the set)")
    ap.add_argument("--naive-cold", action="store_true",
                    help="also run the naive loop with each file evicted from the page cache before it is read")
    ap.add_argument("--read-formats", default="", metavar="FMT[,...]",
                    help="also time reading a slide in these formats (h5, pt, csv) against safetensors, on "
                         "--read-slides slides rewritten in each format")
    ap.add_argument("--read-slides", type=int, default=3)
    ap.add_argument("--big-bag", type=int, default=0, metavar="N", help="also measure memory on one N-patch slide")
    ap.add_argument("--big-models", default="abmil,psatt,dsmil,dtfd,transmil", help="models of the memory check")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    ap.add_argument("--_memprobe", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# --------------------------------------------------------------------------- data


def ensure_data(root: str, slides: int, patches: int, dim: int, seed: int) -> dict:
    """The synthetic set ``root/c16-<slides>x<patches>x<dim>-s<seed>``, generated if missing (resumable)."""
    from milzoo_wsi.synthetic import make_synthetic_slides

    out = Path(root) / f"c16-{slides}x{patches}x{dim}-s{seed}"
    feats, table = out / "features", out / "slides.csv"
    done = table.exists() and feats.is_dir() and len(list(feats.glob("*.safetensors"))) == slides
    t0 = time.perf_counter()
    if not done:
        print(f"generating {slides} slides x ~{patches} x {dim} (fp16) in {out} ...", flush=True)
    info = make_synthetic_slides(str(out), n_slides=slides, mean_patches=patches, dim=dim, seed=seed,
                                 skip_existing=True)
    info["generated_s"] = 0.0 if done else round(time.perf_counter() - t0, 1)
    info["bytes"] = sum(p.stat().st_size for p in feats.glob("*.safetensors"))
    return info


def load_slides(info: dict, workers: int = 2, dtype: str = "float16"):
    from milzoo_wsi.dataset import SlidesSource

    cfg = SlidesSource.Config(features=info["features"], table=info["table"], cache="memory", dtype=dtype,
                              cache_max_gb=1e4, bag_dtype="float32", test_fraction=0.0, load_workers=workers)
    return SlidesSource(cfg).load()["train"]


# --------------------------------------------------------------------------- model runs


def make_recipe(model: str, encoder: str, threads: int | None):
    from milzoo.recipe import load_recipe

    spec = MODELS[model]
    raw = {
        "name": f"bench-{model}",
        "data": {"name": "slides", "features": "unused", "table": "unused"},
        "encoder": {"name": "mlp", "dims": [512, 512]} if encoder == "mlp" else {"name": "identity"},
        "pooling": dict(spec["pooling"]),
        "loss": [dict(x) for x in spec["loss"]],
        "optim": {"name": "adam", "lr": 1e-4},
        "train": {"epochs": 1, "batch_size": 1, "progress": False, "device": "cpu"},
        "protocol": {"kind": "holdout"},
    }
    if threads:
        raw["train"]["threads"] = threads
    return load_recipe(raw)


def trainer_epoch(model: str, ds, encoder: str, threads: int | None, sample: int = 0, seed: int = 0) -> dict:
    """One training epoch through milzoo.train.trainer.Trainer (on ``sample`` random slides, scaled, when > 0)."""
    import numpy as np

    from milzoo.datasets import FoldData
    from milzoo.train import Trainer

    recipe = make_recipe(model, encoder, threads)
    sizes = np.array([ds.slide(i).num_patches for i in range(len(ds))])
    data, scale = ds, 1.0
    if 0 < sample < len(ds):
        idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=sample, replace=False))
        data, scale = ds.subset(idx), float(sizes.sum() / sizes[idx].sum())
    with tempfile.TemporaryDirectory(prefix="milzoo-bench-") as tmp:
        trainer = Trainer(recipe, FoldData(0, data, None, {}), Path(tmp), emit=lambda rec: None)
        t0, c0 = time.perf_counter(), time.process_time()
        stats = trainer.train_epoch(0)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"epoch_s": round(dt * scale, 2), "cpu_s": round(cpu * scale, 2),
           "ms_per_1k_patches": round(1000 * dt / (sizes.sum() / scale / 1000), 1), "loss": round(stats["loss"], 4)}
    if scale != 1.0:
        out["estimated_from_slides"] = len(data)
    return out


def ensure_fp32_h5(ds, root: str) -> list[str]:
    """fp32 TRIDENT/CLAM-layout ``.h5`` copies of every slide (``features`` [n, D] float32, ``coords``):
    the files a feature extractor hands a user, and what a naive loop reads every epoch.  Resumable."""
    import h5py
    import numpy as np

    out = Path(root) / "naive-h5-fp32"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(len(ds)):
        path = out / f"{ds.records[i].slide_id}.h5"
        if not path.exists():
            d = ds.slide(i)
            tmp = path.with_suffix(".h5.part")
            with h5py.File(tmp, "w") as f:
                f.create_dataset("features", data=d.features.float().numpy())
                f.create_dataset("coords", data=d.coords.numpy().astype(np.int64))
            tmp.rename(path)
        paths.append(str(path))
    return paths


def naive_epoch(ds, encoder: str, threads: int | None, cold: bool = False, fmt: str = "safetensors",
                h5_paths: list[str] | None = None) -> dict:
    """Read every slide's file again, fp32, one bag per step: the same ABMIL model and optimiser.

    ``fmt = "safetensors"``: the fp16 safetensors files milzoo trains from (``load_file``, then fp32);
    ``fmt = "h5"``: the fp32 TRIDENT/CLAM ``.h5`` files ``h5_paths`` (from :func:`ensure_fp32_h5`) read with
    h5py, as those projects' loaders do.
    ``cold``: evict each file from the OS page cache right before reading it (a set that does not stay
    in memory, or network storage, is read like this every epoch).
    """
    import h5py
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from milzoo.datasets.batch import Bag, collate_bags
    from milzoo.model.build import build_model
    from milzoo.train.random_stream import FoldStream
    from milzoo.train.settings import make_optimizer

    recipe = make_recipe("abmil", encoder, threads)
    FoldStream(recipe.root.seed, 0).seed_model()  # the trainer's fold-0 seed: same initial weights
    model = build_model(recipe, ds.instance_shape, ds.num_classes, ds.class_names)
    opt = make_optimizer(recipe.root.optim, model.parameters())
    model.train()
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    paths = [r.file.local_path for r in ds.records] if fmt == "safetensors" else h5_paths

    def read(path: str):
        if fmt == "safetensors":
            return load_file(path)["features"].float()
        with h5py.File(path, "r") as f:
            return torch.from_numpy(f["features"][:])
    labels = ds.labels
    total, patches = 0.0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    for i in order:
        if cold:
            fd = os.open(paths[i], os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        x = read(paths[i])
        batch = collate_bags([Bag(x=x, y=int(labels[i]))])
        out = model(batch)
        loss = F.cross_entropy(out.bag_logits, batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
        patches += len(x)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"epoch_s": round(dt, 2), "cpu_s": round(cpu, 2), "ms_per_1k_patches": round(1000 * dt / (patches / 1000), 1),
            "loss": round(total / len(ds), 4), "format": fmt}


def read_costs(ds, root: str, formats: list[str], n: int) -> dict:
    """Read time (milzoo's readers, fp16 -> fp32 included) per 1k patches of ``n`` slides in each format."""
    from milzoo_wsi.stores import read_slide, slide_file
    from milzoo_wsi.synthetic import _write

    import fsspec

    fs = fsspec.filesystem("file")
    out = Path(root) / "formats"
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    for fmt in ["safetensors", *formats]:
        total, patches = 0.0, 0
        for i in range(n):
            d = ds.slide(i)
            path = ds.records[i].file.local_path if fmt == "safetensors" else str(out / f"{ds.records[i].slide_id}.{fmt}")
            if not os.path.exists(path):
                _write(fs, path, fmt, d.features.numpy(), d.coords.numpy(), d.inst_labels.numpy())
            read_slide(slide_file(path))  # warm the page cache
            t0 = time.perf_counter()
            x = read_slide(slide_file(path)).features.float()
            total += time.perf_counter() - t0
            patches += len(x)
        res[fmt] = round(1000 * total / (patches / 1000), 2)
        print(f"  read {fmt:<12} {res[fmt]:8.2f} ms per 1k patches (page-cached file, to fp32)", flush=True)
    return res


# --------------------------------------------------------------------------- memory check


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


def memprobe(model: str, info: dict, encoder: str, threads: int | None) -> dict:
    """In a fresh process: one training step on the big slide; peak RSS above the state before the step."""
    import torch

    from milzoo.datasets import FoldData
    from milzoo.train import Trainer

    ds = load_slides(info, workers=1)
    recipe = make_recipe(model, encoder, threads)
    with tempfile.TemporaryDirectory(prefix="milzoo-bench-") as tmp:
        trainer = Trainer(recipe, FoldData(0, ds, None, {}), Path(tmp), emit=lambda rec: None)
        n = ds.slide(0).num_patches
        torch.set_grad_enabled(True)
        base = _rss_bytes()
        with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
            fh.write("5")
        t0 = time.perf_counter()
        trainer.train_epoch(0)
        dt = time.perf_counter() - t0
        peak = _hwm_bytes()
    return {"model": model, "patches": n, "step_s": round(dt, 2), "base_mib": round(base / 2**20),
            "extra_mib": round((peak - base) / 2**20), "cache_mib": round(n * ds.feature_dim * 2 / 2**20)}


def big_bag_check(args) -> list[dict]:
    import numpy as np
    from safetensors.numpy import save_file

    out = Path(args.root) / f"bigbag-{args.big_bag}x{args.dim}"
    feats = out / "features"
    feats.mkdir(parents=True, exist_ok=True)
    f = feats / "big.safetensors"
    if not f.exists():
        rng = np.random.default_rng(args.seed)
        x = rng.standard_normal((args.big_bag, args.dim), dtype=np.float32).astype(np.float16)
        side = int(np.ceil(np.sqrt(args.big_bag)))
        coords = np.stack(np.divmod(np.arange(args.big_bag), side)[::-1], 1).astype(np.int64) * 256
        save_file({"features": x, "coords": coords}, str(f))
    (out / "slides.csv").write_text("slide_id,label\nbig,1\n")  # one bag trains (classes 0 and 1)
    info = {"features": str(feats), "table": str(out / "slides.csv")}
    results = []
    for m in args.big_models.split(","):
        cmd = [sys.executable, __file__, "--_memprobe", json.dumps({"model": m, "info": info, "encoder": args.encoder,
                                                                      "threads": args.threads})]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            results.append({"model": m, "error": proc.stderr.strip().splitlines()[-1:]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print("  memory", results[-1], flush=True)
    return results


# --------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = _args(argv)
    if args._memprobe:
        p = json.loads(args._memprobe)
        if p.get("threads"):
            import torch

            torch.set_num_threads(p["threads"])
        print(json.dumps(memprobe(p["model"], p["info"], p["encoder"], p["threads"])))
        return {}
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    res: dict = {
        "command": "python benchmarks/wsi_epoch.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_start": [round(v, 2) for v in os.getloadavg()]},
    }
    if args.models in ("", "none"):  # the memory check only
        if args.big_bag:
            res["big_bag"] = big_bag_check(args)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        return res
    info = ensure_data(args.root, args.slides, args.patches, args.dim, args.seed)
    res["data"] = {k: info[k] for k in ("n_slides", "n_patches", "dim", "generated_s")}
    res["data"]["disk_gb"] = round(info["bytes"] / 1e9, 2)
    t0 = time.perf_counter()
    ds = load_slides(info, dtype=args.cache_dtype)
    res["data"]["load_s"] = round(time.perf_counter() - t0, 1)
    res["data"]["cache_dtype"] = args.cache_dtype
    res["data"]["cache_gb"] = round(res["data"]["n_patches"] * args.dim * ds.slide(0).features.element_size() / 1e9, 2)
    print(f"data: {res['data']}", flush=True)
    subset = dict((m, int(n)) for m, n in (item.split(":") for item in args.subset.split(",") if item))
    res["epoch"] = {}

    def show(label, r):
        est = f"  (estimated from {r['estimated_from_slides']} slides)" if "estimated_from_slides" in r else ""
        print(f"  {label:<34} epoch {r['epoch_s']:8.2f} s wall, {r['cpu_s']:8.2f} s CPU, "
              f"{r['ms_per_1k_patches']:6.1f} ms per 1k patches{est}", flush=True)

    # warm-up, not timed: the first optimiser step imports torch._dynamo (seconds), and the first steps
    # grow the process's memory; neither belongs to the first model's epoch
    trainer_epoch("abmil", ds, args.encoder, args.threads, sample=min(5, len(ds)))
    for m in args.models.split(","):
        r = trainer_epoch(m, ds, args.encoder, args.threads, subset.get(m, 0), args.seed)
        res["epoch"][m] = r
        show(f"{m} (trainer)", r)
    if args.threads and args.default_threads_too:
        import multiprocessing

        n = multiprocessing.cpu_count()
        torch.set_num_threads(n)
        r = trainer_epoch("abmil", ds, args.encoder, n)
        res["epoch"][f"abmil@{n}threads"] = r
        show(f"abmil (trainer, {n} threads)", r)
        torch.set_num_threads(args.threads)
    if not args.no_naive:
        for fmt in args.naive_formats.split(","):
            h5_paths = None
            if fmt == "h5":
                t0 = time.perf_counter()
                h5_paths = ensure_fp32_h5(ds, str(Path(info["features"]).parent))
                print(f"  fp32 .h5 copies ready ({time.perf_counter() - t0:.0f} s)", flush=True)
            for cold in [False, True] if args.naive_cold else [False]:
                key = f"naive_abmil_{fmt}" + ("_cold" if cold else "")
                r = naive_epoch(ds, args.encoder, args.threads, cold=cold, fmt=fmt, h5_paths=h5_paths)
                res[key] = r
                label = f"naive ABMIL loop, {'fp16 safetensors' if fmt == 'safetensors' else 'fp32 .h5'}"
                show(label + (", cold" if cold else ""), r)
                if "abmil" in res["epoch"]:
                    ab = res["epoch"]["abmil"]
                    res[f"speedup_vs_{key}"] = round(r["epoch_s"] / ab["epoch_s"], 2)
                    res[f"cpu_ratio_vs_{key}"] = round(r["cpu_s"] / ab["cpu_s"], 2)
                    print(f"  trainer path vs {label}{', cold' if cold else ''}: {res[f'speedup_vs_{key}']}x wall, "
                          f"{res[f'cpu_ratio_vs_{key}']}x CPU", flush=True)
    if args.read_formats:
        res["read_ms_per_1k_patches"] = read_costs(ds, args.root, args.read_formats.split(","), args.read_slides)
        if "naive_abmil_safetensors" in res:
            base = res["read_ms_per_1k_patches"]["safetensors"]
            res["naive_abmil_estimated_by_format"] = {
                f: round(res["naive_abmil_safetensors"]["epoch_s"] + (v - base) * res["data"]["n_patches"] / 1e6, 1)
                for f, v in res["read_ms_per_1k_patches"].items()
            }
            print(f"  naive ABMIL epoch estimated per file format: {res['naive_abmil_estimated_by_format']}", flush=True)
    del ds
    if args.big_bag:
        res["big_bag"] = big_bag_check(args)
    res["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
