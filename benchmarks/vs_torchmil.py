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
  trained by ``milzoo.testing.replay.replay_fold``: one bag per step in milzoo's order, drawing torch's random
  numbers as milzoo's trainer does, through the trainer's own description of its random stream
  (``milzoo.train.random_stream``), so a change to that stream moves both sides.  Only float rounding can
  differ: torchmil's attention has no bias, its loss is ``BCEWithLogits(t)`` where milzoo's is the
  cross-entropy of ``[0, t]``.
- ``milzoo 1 bag/step fp64`` and ``torchmil replay fp64``: the same pair with ``train.precision = "fp64"``
  on milzoo's side and everything in float64 on torchmil's.  This pair carries the goal, and the goal is the
  one that cannot cancel: in every fold, the mean training loss of **every epoch** equal within 1e-9, and
  **every test bag's probability** equal within 1e-9 (milzoo's recomputed from each fold's ``last``
  checkpoint at full precision).  The accuracy difference is printed, not checked: two bags changing sides
  in opposite directions leave it at 0.  In float32 the two sides' rounding (about 1e-7) can be amplified by
  Adam's occasional loss spikes into a different prediction now and then, which says nothing about the
  models; the float32 pair is printed beside it, against a 1e-4 tolerance.

Accuracy is the last epoch's, on the held-out fold, averaged over the 10 folds (prediction: logit > 0).
The script exits 1 when the float64 pair is not faithful.  ``--epochs 3`` is the quick check (about 2
minutes); tests/test_torchmil_replay.py runs a 2-fold, 3-epoch version against a reference ABMIL in every
``make test``.

    .venv/bin/python benchmarks/vs_torchmil.py                 # writes benchmarks/results/vs_torchmil.json
    .venv/bin/python benchmarks/vs_torchmil.py --seeds 5       # accuracy over 5 seeds: ..._seeds.json
"""

from __future__ import annotations

import argparse
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
SAME_STEPS = ["train.batch_size=1", "pooling.head=sigmoid"]  # torchmil's: one bag per Adam step, one logit
MILZOO = [sys.executable, "-m", "milzoo"]


# ----------------------------------------------------------------------------- shared data (workers)
def _recipe(epochs: int, seed: int = 0, extra: list[str] | None = None):
    """The quickstart at torchmil's settings (one bag per step, one logit), ``epochs`` and ``seed``."""
    from milzoo.recipe import load_recipe

    return load_recipe(str(RECIPE), [*SAME_STEPS, f"train.epochs={epochs}", f"seed={seed}", *(extra or [])])


def _folds(epochs: int, seed: int = 0):
    """milzoo's recipe, folds and per-fold standardised bags: [(fold, recipe, train [(x, y)], test [(x, y, id)])]."""
    from milzoo.datasets.protocols import folds_for
    from milzoo.model.mil import Standardize

    recipe = _recipe(epochs, seed)
    out = []
    for fd in folds_for(recipe):
        train_bags = [fd.train.get_bag(i) for i in range(len(fd.train))]
        test = fd.evals["test"]
        std = Standardize(train_bags[0].x.shape[1])
        std.fit(b.x for b in train_bags)
        norm = lambda b: (std(b.x), int(b.y))  # noqa: E731 - what milzoo's model does first
        test_bags = [test.get_bag(i) for i in range(len(test))]
        out.append((fd.fold, recipe, [norm(b) for b in train_bags], [(*norm(b), str(b.bag_id)) for b in test_bags]))
    return out


def _feat_ext(dropout: float):
    from torch import nn

    return nn.Sequential(nn.Linear(166, 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, 128), nn.ReLU(),
                         nn.Dropout(dropout))


def _accuracy(model, bags) -> float:
    """Accuracy (logit > 0) of ``model`` on ``[(x, y, id)]``."""
    import torch

    model.eval()
    with torch.no_grad():
        logits = [float(model(x.unsqueeze(0)).reshape(())) for x, _, _ in bags]
    return sum(int(t > 0) == y for t, (_, y, _) in zip(logits, bags)) / len(bags)


def worker_torchmil(epochs: int, seed: int = 0) -> dict:
    """torchmil's ABMIL trained by torchmil's Trainer (what a torchmil user runs), on the folds of milzoo's
    ``seed``."""
    import torch
    import torchmetrics
    from tensordict import TensorDict
    from torchmil.data import collate_fn
    from torchmil.models import ABMIL
    from torchmil.utils.trainer import Trainer

    from milzoo.train.random_stream import FoldStream

    torch.set_num_threads(1)
    accs = []
    for fold, recipe, train, test in _folds(epochs, seed=seed):
        FoldStream(seed, fold).seed_model()
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


def _torchmil_from(model):
    """torchmil's ``ABMIL`` with milzoo's initial weights of ``model`` (the quickstart's encoder and attention)."""
    import torch
    from torchmil.models import ABMIL

    tm = ABMIL(in_shape=(166,), att_dim=model.pooling.attn_V.out_features, feat_ext=_feat_ext(0.2))
    bare = lambda m: getattr(m, "module", m)  # noqa: E731 - torchmil's LazyLinear wraps an nn.Linear
    with torch.no_grad():
        for i in (0, 3):
            tm.feat_ext[i].load_state_dict(model.encoder.net[i].state_dict())
        bare(tm.pool.fc1).load_state_dict(model.pooling.attn_V.state_dict())
        tm.pool.fc2.weight.copy_(model.pooling.attn_w.weight)  # torchmil's has no bias (softmax ignores it)
        bare(tm.classifier).load_state_dict(model.pooling.classifier.state_dict())
    return tm


def worker_replay(epochs: int, float64: bool = False) -> dict:
    """torchmil's ABMIL from milzoo's initial weights, milzoo's bag order and random stream (faithfulness);
    with ``float64`` everything in float64, as milzoo's ``train.precision = "fp64"``."""
    import torch

    from milzoo.datasets.protocols import folds_for
    from milzoo.testing.replay import replay_fold

    torch.set_num_threads(1)
    recipe = _recipe(epochs, extra=["train.precision=fp64"] if float64 else [])
    lr, wd = recipe.root.optim.lr, recipe.root.optim.weight_decay
    folds = {}
    for fd in folds_for(recipe):
        folds[str(fd.fold)] = vars(replay_fold(recipe, fd, _torchmil_from, torch.nn.BCEWithLogitsLoss(),
                                               lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=wd, foreach=True)))
    labels = _test_labels(recipe)
    accs = [sum((p > 0.5) == bool(labels[b]) for b, p in f["probs"].items()) / len(f["probs"]) for f in folds.values()]
    return {"acc_per_fold": accs, "acc": sum(accs) / len(accs), "folds": folds}


def _test_labels(recipe) -> dict[str, int]:
    """Bag id -> label of every test bag of the recipe's folds."""
    from milzoo.datasets.protocols import folds_for

    return {str(b.bag_id): int(b.y) for fd in folds_for(recipe) for b in map(fd.evals["test"].get_bag,
                                                                              range(len(fd.evals["test"])))}


# ----------------------------------------------------------------------------- parent
def _timed(cmd: list[str], env=None) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-4000:]}")
    return wall, out.stdout


def run_milzoo(name: str, tmp: Path, epochs: int, extra: list[str], replayed: list[str] | None = None) -> dict:
    """``milzoo run`` of the quickstart with ``extra`` arguments, timed.  ``replayed``: the ``--set``s of a
    replayed run (torchmil's settings), whose per-fold training losses and full-precision test probabilities
    are then read back (``milzoo.testing.replay.run_outputs``) for the faithfulness comparison."""
    out = tmp / name.replace(" ", "_").replace("/", "_")
    cmd = [*MILZOO, "run", str(RECIPE), "--out", str(out), "--no-progress", "--set", f"train.epochs={epochs}", *extra]
    wall, _ = _timed(cmd)
    summary = json.loads((out / "summary.json").read_text())
    acc = summary["last"]["test"]["acc"]
    res = {"name": name, "command": " ".join(["milzoo", *cmd[3:]]), "wall_s": round(wall, 2),
           "acc": acc["mean"], "acc_per_fold": acc["values"]}
    if replayed is not None:
        from milzoo.testing.replay import run_outputs

        res["folds"] = {str(k): vars(v) for k, v in run_outputs(out, _recipe(epochs, extra=replayed)).items()}
    return res


def run_worker(name: str, kind: str, epochs: int, seed: int = 0) -> dict:
    wall, stdout = _timed([sys.executable, __file__, "--worker", kind, "--epochs", str(epochs), "--seed", str(seed)])
    res = json.loads(stdout.strip().splitlines()[-1])
    return {"name": name, "command": f"python benchmarks/vs_torchmil.py --worker {kind}", "wall_s": round(wall, 2),
            **res}


def faithfulness(mz: dict, tr: dict, tol: float, labels: dict[str, int]):
    """The :class:`~milzoo.testing.replay.Agreement` of a milzoo run and its replay (their ``folds``)."""
    from milzoo.testing.replay import FoldOutputs, compare

    side = lambda r: {int(k): FoldOutputs(**v) for k, v in r["folds"].items()}  # noqa: E731
    return compare(side(mz), side(tr), loss_tol=tol, prob_tol=tol, labels=labels)


def machine() -> dict:
    """What run.json records of the hardware (CPU model, instruction set, features, cores), versions, load."""
    from importlib.metadata import version

    import torch

    from milzoo.runs.environment import machine as hardware

    hw = hardware()
    return {"cpus": hw["cores"], **hw, "python": platform.python_version(), "torch": torch.__version__,
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
    same_steps = [a for kv in SAME_STEPS for a in ("--set", kv)]  # torchmil's settings
    try:
        todo = [
            lambda: run_milzoo("milzoo quickstart --jobs 2", tmp, args.epochs, ["--jobs", "2"]),
            lambda: run_worker("torchmil", "torchmil", args.epochs),
            lambda: run_milzoo("milzoo quickstart", tmp, args.epochs, []),
            lambda: run_milzoo("milzoo 1 bag/step", tmp, args.epochs, same_steps, replayed=[]),
            lambda: run_milzoo("milzoo 1 bag/step --jobs 2", tmp, args.epochs, [*same_steps, "--jobs", "2"]),
            lambda: run_worker("torchmil replay", "replay", args.epochs),
            lambda: run_milzoo("milzoo 1 bag/step fp64", tmp, args.epochs,
                               [*same_steps, "--set", "train.precision=fp64"], replayed=["train.precision=fp64"]),
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
    labels = _test_labels(_recipe(args.epochs))
    faith = {}
    for tag, mz, tr, tol in (("fp64", "milzoo 1 bag/step fp64", "torchmil replay fp64", 1e-9),
                             ("fp32", "milzoo 1 bag/step", "torchmil replay", 1e-4)):
        faith[tag] = faithfulness(by[mz], by[tr], tol, labels)
        faith[tag].pair = [mz, tr]
    for r in runs:
        r.pop("folds", None)
    print(f"{'run':<30} {'wall s':>8} {'acc':>7}")
    for r in runs:
        print(f"{r['name']:<30} {r['wall_s']:>8.1f} {r['acc']:>7.3f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    for tag, f in faith.items():
        mz, tr = f.pair
        verdict = ("FAITHFUL" if f.faithful else "NOT FAITHFUL") if tag == "fp64" else \
            "float32, printed only: rounding amplified by loss spikes may part the two"
        print(f"faithfulness {tag} ({tr} vs {mz}): {verdict}")
        for line in f.describe():
            print(f"  {line}")
    result = {"epochs": args.epochs, "machine": info, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "runs": runs, "ratios": {k: round(v, 3) for k, v in ratios.items()},
              "faithful": faith["fp64"].faithful,
              "faithfulness": {tag: {"pair": f.pair, **f.as_dict()} for tag, f in faith.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not faith["fp64"].faithful:
        sys.exit(1)


if __name__ == "__main__":
    main()
