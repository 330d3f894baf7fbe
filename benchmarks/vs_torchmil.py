"""milzoo vs torchmil: ABMIL on MUSK1, the same 10 folds, wall time and accuracy, measured in one run.

Needs torchmil (``pip install -e .[bench]``; check with ``pip install --dry-run`` that it leaves torch alone).

What runs, each in a fresh process so that every side pays its own imports (the wall time is what a user
waits for, start to summary):

- ``milzoo quickstart --jobs 2``: ``milzoo run recipes/quickstart.toml --jobs 2`` as shipped (4 bags per step).
- ``milzoo quickstart``: the same, sequential (``--jobs 1``).
- ``milzoo 1 bag/step``: the quickstart with ``train.batch_size = 1`` and ``pooling.head = "sigmoid"``:
  torchmil's settings (one bag per Adam step, ABMIL's single logit), so the same model and number of steps;
  also with ``--jobs 2`` (the speed-up at the same model and steps, hence the same accuracy up to rounding).
- ``torchmil``: torchmil 1.0.2's ``ABMIL`` with the quickstart's encoder as ``feat_ext`` (166 -> 256 -> 128,
  ReLU, dropout 0.2), ``att_dim = 64``, BCE on one logit, Adam (lr 5e-4, weight decay 5e-4), 40 epochs of one
  bag per step, trained by torchmil's own ``Trainer`` on milzoo's folds and per-fold standardised features;
  the held-out fold is its validation loader (evaluated after every epoch, as milzoo evaluates its test
  split). One torch thread, as the quickstart.
- ``torchmil replay``: torchmil's ``ABMIL`` module started from milzoo's initial weights of each fold and
  trained in a plain loop that visits the bags in milzoo's order and draws the same random numbers
  (the DataLoader seeds, the dropout masks): the faithfulness check against ``milzoo 1 bag/step`` (only
  float rounding differs: torchmil's attention has no bias, its loss is ``BCEWithLogits(t)`` where milzoo's
  is the cross-entropy of ``[0, t]``).
- ``milzoo 1 bag/step fp64`` and ``torchmil replay fp64``: the same pair with ``train.precision = "fp64"``
  on milzoo's side and everything in float64 on torchmil's. This pair carries the goal (accuracies within
  0.01): in float32 the two sides' rounding (about 1e-7) is amplified by Adam's occasional loss spikes into
  a different prediction for a bag now and then (seen: 1 bag of 92), which says nothing about the models;
  in float64 the rounding is 1e-16 and the spikes cannot amplify it that far. The float32 pair is printed
  beside it.

Accuracy is the last epoch's, on the held-out fold, averaged over the 10 folds (prediction: logit > 0).
Beyond the accuracies, the faithfulness check prints how far the two runs' test-bag probabilities are apart
(median, largest, the bags classified differently) and, per fold, for how many leading epochs their mean
training losses agree within 1e-4: the same model on the same random stream agrees to float rounding until a
training instability (a loss spike) amplifies that rounding, and the epoch where that happens is shown.

    .venv/bin/python benchmarks/vs_torchmil.py                 # writes benchmarks/results/vs_torchmil.json
    .venv/bin/python benchmarks/vs_torchmil.py --seeds 5       # accuracy over 5 seeds: ..._seeds.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart.toml"
MILZOO = [sys.executable, "-m", "milzoo"]


# ----------------------------------------------------------------------------- shared data (workers)
def _folds(epochs: int, float64: bool = False, seed: int = 0):
    """milzoo's recipe, folds and per-fold standardised bags: [(fold, recipe, train [(x, y)], test [(x, y)])]
    (in float64 with ``float64``, standardised as ``train.precision = "fp64"`` does: statistics in float64)."""
    import torch

    from milzoo.model.build import build_dataset
    from milzoo.model.mil import Standardize
    from milzoo.datasets.protocols import make_folds
    from milzoo.recipe import load_recipe

    recipe = load_recipe(str(RECIPE), ["train.batch_size=1", "pooling.head=sigmoid", f"train.epochs={epochs}",
                                       f"seed={seed}"])
    torch.manual_seed(recipe.root.seed)
    out = []
    for fd in make_folds(recipe.root.protocol, build_dataset(recipe), recipe.root.seed):
        train_bags = [fd.train.get_bag(i) for i in range(len(fd.train))]
        test = fd.evals["test"]
        std = Standardize(train_bags[0].x.shape[1])
        dtype = torch.float64 if float64 else torch.float32
        std.to(dtype).fit(b.x for b in train_bags)
        norm = lambda b: (std(b.x.to(dtype)), int(b.y))  # noqa: E731 - what milzoo's model does first
        test_bags = [test.get_bag(i) for i in range(len(test))]
        out.append((fd.fold, recipe, [norm(b) for b in train_bags], [(*norm(b), str(b.bag_id)) for b in test_bags]))
    return out


def _feat_ext(dropout: float):
    from torch import nn

    return nn.Sequential(nn.Linear(166, 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, 128), nn.ReLU(),
                         nn.Dropout(dropout))


def _accuracy(model, bags) -> float:
    return _scores(model, bags)[0]


def _scores(model, bags) -> tuple[float, dict[str, float]]:
    """Accuracy (logit > 0) and each test bag's positive-class probability, by bag id."""
    import torch

    model.eval()
    with torch.no_grad():
        logits = [float(model(x.unsqueeze(0)).reshape(())) for x, _, _ in bags]
    hits = [int(t > 0) == y for t, (_, y, _) in zip(logits, bags)]
    return sum(hits) / len(hits), {bid: float(torch.sigmoid(torch.tensor(t))) for t, (_, _, bid) in zip(logits, bags)}


def worker_torchmil(epochs: int, seed: int = 0) -> dict:
    """torchmil's ABMIL trained by torchmil's Trainer (what a torchmil user runs), on the folds of milzoo's
    ``seed``."""
    import torch
    import torchmetrics
    from tensordict import TensorDict
    from torchmil.data import collate_fn
    from torchmil.models import ABMIL
    from torchmil.utils.trainer import Trainer

    torch.set_num_threads(1)
    accs = []
    for fold, recipe, train, test in _folds(epochs, seed=seed):
        torch.manual_seed(seed * 1000 + fold)
        model = ABMIL(in_shape=(166,), att_dim=recipe.root.pooling.attn_hidden, feat_ext=_feat_ext(0.2))
        opt = torch.optim.Adam(model.parameters(), lr=recipe.root.optim.lr, weight_decay=recipe.root.optim.weight_decay)
        as_dicts = lambda bags: [TensorDict({"X": b[0], "Y": torch.tensor(float(b[1]))}) for b in bags]  # noqa: E731
        train_dl = torch.utils.data.DataLoader(as_dicts(train), batch_size=1, shuffle=True, collate_fn=collate_fn)
        test_dl = torch.utils.data.DataLoader(as_dicts(test), batch_size=1, shuffle=False, collate_fn=collate_fn)
        trainer = Trainer(model, opt, metrics_dict={"accuracy": torchmetrics.Accuracy(task="binary")},
                          obj_metric="accuracy", device="cpu", disable_pbar=True, verbose=False)
        trainer.train(max_epochs=epochs, train_dataloader=train_dl, val_dataloader=test_dl)
        accs.append(_accuracy(model, test))  # the last epoch's model, as milzoo's "last"
    return {"acc_per_fold": accs, "acc": sum(accs) / len(accs)}


def worker_replay(epochs: int, float64: bool = False) -> dict:
    """torchmil's ABMIL from milzoo's initial weights, milzoo's bag order and random stream (faithfulness);
    with ``float64`` everything in float64, as milzoo's ``train.precision = "fp64"``."""
    import torch
    from torchmil.models import ABMIL

    from milzoo.model.build import build_model

    torch.set_num_threads(1)
    accs, probs, curves = [], {}, {}
    dtype = torch.float64 if float64 else torch.float32
    for fold, recipe, train, test in _folds(epochs, float64):
        model = ABMIL(in_shape=(166,), att_dim=recipe.root.pooling.attn_hidden, feat_ext=_feat_ext(0.2))
        torch.manual_seed(recipe.root.seed * 1000 + fold)  # what milzoo's Trainer does, then builds its model
        ref = build_model(recipe, (166,), 2, ["0", "1"])
        with torch.no_grad():
            for i in (0, 3):
                model.feat_ext[i].load_state_dict(ref.encoder.net[i].state_dict())
            bare = lambda m: getattr(m, "module", m)  # noqa: E731 - torchmil's LazyLinear wraps an nn.Linear
            bare(model.pool.fc1).load_state_dict(ref.pooling.attn_V.state_dict())
            model.pool.fc2.weight.copy_(ref.pooling.attn_w.weight)  # torchmil's has no bias (softmax ignores it)
            bare(model.classifier).load_state_dict(ref.pooling.classifier.state_dict())
        model.to(dtype)  # milzoo builds in float32 and then doubles its model: the same initial values
        opt = torch.optim.Adam(model.parameters(), lr=recipe.root.optim.lr, weight_decay=recipe.root.optim.weight_decay,
                               foreach=True)
        seed = recipe.root.seed
        curve = []  # mean training loss per epoch, to compare with milzoo's metrics.jsonl
        for epoch in range(epochs):
            g = torch.Generator().manual_seed(seed * 1_000_003 + fold * 1009 + epoch)  # milzoo's epoch order
            order = torch.randperm(len(train), generator=g).tolist()
            torch.empty((), dtype=torch.int64).random_()  # the seed milzoo's training DataLoader draws
            model.train()
            total = 0.0
            for i in order:
                x, y = train[i]
                loss = model.criterion(model(x.unsqueeze(0)).to(dtype), torch.tensor([float(y)], dtype=dtype))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss)
            curve.append(total / len(order))
            torch.empty((), dtype=torch.int64).random_()  # the seed of milzoo's evaluation DataLoader
        acc, p = _scores(model, test)
        accs.append(acc)
        probs[str(fold)] = p
        curves[str(fold)] = curve
    return {"acc_per_fold": accs, "acc": sum(accs) / len(accs), "probs": probs, "train_loss": curves}


# ----------------------------------------------------------------------------- parent
def _timed(cmd: list[str], env=None) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-4000:]}")
    return wall, out.stdout


def run_milzoo(name: str, tmp: Path, epochs: int, extra: list[str]) -> dict:
    out = tmp / name.replace(" ", "_").replace("/", "_")
    cmd = [*MILZOO, "run", str(RECIPE), "--out", str(out), "--no-progress", "--set", f"train.epochs={epochs}", *extra]
    wall, _ = _timed(cmd)
    summary = json.loads((out / "summary.json").read_text())
    acc = summary["last"]["test"]["acc"]
    probs = {}  # each fold's last-epoch test probabilities, by bag id (the faithfulness comparison)
    for fold_dir in sorted(out.glob("fold-*")):
        with open(fold_dir / "last" / "predictions-test.csv", newline="") as fh:
            probs[str(int(fold_dir.name.split("-")[1]))] = {r["bag_id"]: float(r["p_positive"]) for r in csv.DictReader(fh)}
    curves: dict[str, list[float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "train":
            curves.setdefault(str(rec.get("fold", 0)), []).append(rec["loss"])
    return {"name": name, "command": " ".join(["milzoo", *cmd[3:]]), "wall_s": round(wall, 2),
            "acc": acc["mean"], "acc_per_fold": acc["values"], "probs": probs, "train_loss": curves}


def run_worker(name: str, kind: str, epochs: int, seed: int = 0) -> dict:
    wall, stdout = _timed([sys.executable, __file__, "--worker", kind, "--epochs", str(epochs), "--seed", str(seed)])
    res = json.loads(stdout.strip().splitlines()[-1])
    return {"name": name, "command": f"python benchmarks/vs_torchmil.py --worker {kind}", "wall_s": round(wall, 2),
            **res}


def _prob_differences(a: dict, b: dict) -> dict:
    """|p_a - p_b| over every test bag of every fold (matched by fold and bag id), and the bags whose
    predicted class differs, each with both probabilities: how close two runs of the same model are."""
    diffs, flipped = [], []
    for fold, pa in a.items():
        for bid, p in pa.items():
            q = b[fold][bid]
            diffs.append(abs(p - q))
            if (p > 0.5) != (q > 0.5):
                flipped.append(f"fold {fold} bag {bid}: {p:.4f} vs {q:.4f}")
    diffs.sort()
    return {"bags": len(diffs), "median": diffs[len(diffs) // 2], "max": diffs[-1], "flipped": len(flipped),
            "flipped_bags": flipped}


def _curve_agreement(a: dict, b: dict, tol: float = 1e-4) -> dict:
    """Per fold: for how many leading epochs the mean training losses of two runs agree within ``tol``
    (the same model and random stream agree to float rounding until an instability amplifies it)."""
    out = {}
    for fold in sorted(a, key=int):
        pairs = list(zip(a[fold], b[fold]))
        equal = next((e for e, (x, y) in enumerate(pairs) if abs(x - y) > tol), len(pairs))
        out[fold] = {"epochs": len(pairs), "epochs_equal": equal,
                     "max_diff_while_equal": max((abs(x - y) for x, y in pairs[:equal]), default=0.0)}
    return out


def machine() -> dict:
    import torch

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    from importlib.metadata import version

    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "torchmil": version("torchmil"), "load_average_at_start": os.getloadavg()}


def seeds_study(args, info: dict) -> None:
    """Equal accuracy, measured: the shipped quickstart (4 bags/step, two logits) and torchmil's Trainer
    (1 bag/step, one logit) on the same folds for each seed; the paired difference and its standard error."""
    import statistics

    tmp = Path(tempfile.mkdtemp(prefix="vs_torchmil_seeds_"))
    rows = []
    try:
        for seed in range(args.seeds):
            mz = run_milzoo(f"milzoo quickstart --jobs 2 seed {seed}", tmp, args.epochs,
                            ["--jobs", "2", "--set", f"seed={seed}"])
            tm = run_worker(f"torchmil seed {seed}", "torchmil", args.epochs, seed)
            rows.append({"seed": seed, "milzoo": mz["acc"], "torchmil": tm["acc"], "milzoo_wall_s": mz["wall_s"],
                         "torchmil_wall_s": tm["wall_s"]})
            print(f"seed {seed}: milzoo quickstart --jobs 2 {mz['acc']:.3f} ({mz['wall_s']:.0f} s), torchmil "
                  f"{tm['acc']:.3f} ({tm['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    diffs = [r["milzoo"] - r["torchmil"] for r in rows]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    summary = {
        "milzoo_mean": statistics.mean(r["milzoo"] for r in rows),
        "torchmil_mean": statistics.mean(r["torchmil"] for r in rows),
        "difference_mean": statistics.mean(diffs), "difference_se": se,
        "wall_ratio": sum(r["torchmil_wall_s"] for r in rows) / sum(r["milzoo_wall_s"] for r in rows),
    }
    print(f"{'seed':>4} {'milzoo':>8} {'torchmil':>9}")
    for r in rows:
        print(f"{r['seed']:>4} {r['milzoo']:>8.3f} {r['torchmil']:>9.3f}")
    print(f"mean accuracy: milzoo quickstart --jobs 2 {summary['milzoo_mean']:.3f}, torchmil {summary['torchmil_mean']:.3f};"
          f" difference {summary['difference_mean']:+.3f} +/- {se:.3f} (standard error over {len(rows)} seeds)")
    print(f"torchmil / milzoo quickstart --jobs 2, all seeds: {summary['wall_ratio']:.2f}x")
    out = Path(args.out)
    out = out.with_name(out.stem + "_seeds.json") if out.name == "vs_torchmil.json" else out
    out.write_text(json.dumps({"epochs": args.epochs, "machine": info, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "seeds": rows, **summary}, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vs_torchmil.json"))
    ap.add_argument("--seeds", type=int, default=0,
                    help="instead of the timing runs: accuracy of the quickstart (--jobs 2) and of torchmil's "
                         "Trainer over seeds 0..N-1 (each seed: other folds, initial weights and order)")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=["torchmil", "replay", "replay64"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = (worker_torchmil(args.epochs, args.seed) if args.worker == "torchmil"
               else worker_replay(args.epochs, float64=args.worker == "replay64"))
        print(json.dumps(res))
        return
    info = machine()
    if args.seeds:
        seeds_study(args, info)
        return
    tmp = Path(tempfile.mkdtemp(prefix="vs_torchmil_"))
    same_steps = ["--set", "train.batch_size=1", "--set", "pooling.head=sigmoid"]  # torchmil's settings
    try:
        todo = [
            lambda: run_milzoo("milzoo quickstart --jobs 2", tmp, args.epochs, ["--jobs", "2"]),
            lambda: run_worker("torchmil", "torchmil", args.epochs),
            lambda: run_milzoo("milzoo quickstart", tmp, args.epochs, []),
            lambda: run_milzoo("milzoo 1 bag/step", tmp, args.epochs, same_steps),
            lambda: run_milzoo("milzoo 1 bag/step --jobs 2", tmp, args.epochs, [*same_steps, "--jobs", "2"]),
            lambda: run_worker("torchmil replay", "replay", args.epochs),
            lambda: run_milzoo("milzoo 1 bag/step fp64", tmp, args.epochs, [*same_steps, "--set",
                                                                             "train.precision=fp64"]),
            lambda: run_worker("torchmil replay fp64", "replay64", args.epochs),
        ]
        runs = []
        for job in todo:
            runs.append(job())
            print(f"done: {runs[-1]['name']}: {runs[-1]['wall_s']:.1f} s, acc {runs[-1]['acc']:.3f} "
                  f"(load average {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by = {r["name"]: r for r in runs}
    tm = by["torchmil"]["wall_s"]
    ratios = {
        "torchmil / milzoo quickstart --jobs 2 (goal >= 3)": tm / by["milzoo quickstart --jobs 2"]["wall_s"],
        "torchmil / milzoo quickstart": tm / by["milzoo quickstart"]["wall_s"],
        "torchmil / milzoo 1 bag/step --jobs 2 (same model and steps)": tm / by["milzoo 1 bag/step --jobs 2"]["wall_s"],
        "torchmil / milzoo 1 bag/step (same model and steps)": tm / by["milzoo 1 bag/step"]["wall_s"],
    }
    faith = {}
    for tag, mz, tr in (("fp64", "milzoo 1 bag/step fp64", "torchmil replay fp64"),
                        ("fp32", "milzoo 1 bag/step", "torchmil replay")):
        faith[tag] = {"acc_difference": abs(by[tr]["acc"] - by[mz]["acc"]),
                      "probabilities": _prob_differences(by[mz]["probs"], by[tr]["probs"]),
                      "train_loss": _curve_agreement(by[mz]["train_loss"], by[tr]["train_loss"]),
                      "pair": [mz, tr]}
    for r in runs:
        r.pop("probs", None)
        r.pop("train_loss", None)
    print(f"{'run':<30} {'wall s':>8} {'acc':>7}")
    for r in runs:
        print(f"{r['name']:<30} {r['wall_s']:>8.1f} {r['acc']:>7.3f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    for tag, f in faith.items():
        mz, tr = f["pair"]
        goal = " (goal <= 0.01)" if tag == "fp64" else " (float32: rounding, amplified by loss spikes, may flip a bag)"
        print(f"faithfulness {tag}: |acc({tr}) - acc({mz})| = {f['acc_difference']:.4f}{goal}")
        d = f["probabilities"]
        print(f"  test-bag probabilities (6 significant digits in the CSV): median |diff| {d['median']:.2e}, max {d['max']:.2e}; {d['flipped']} of "
              f"{d['bags']} bags on the other side of 0.5 ({', '.join(d['flipped_bags']) or 'none'})")
        for fold, c in f["train_loss"].items():
            print(f"  fold {fold}: training loss per epoch equal within 1e-4 for {c['epochs_equal']} of {c['epochs']} "
                  f"epochs (largest difference before then {c['max_diff_while_equal']:.1e})")
    result = {"epochs": args.epochs, "machine": info, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "runs": runs, "ratios": {k: round(v, 3) for k, v in ratios.items()},
              "faithfulness_acc_difference": faith["fp64"]["acc_difference"], "faithfulness": faith}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
