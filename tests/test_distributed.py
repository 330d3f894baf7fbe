"""Distributed training on CPU: 2 gloo ranks launched by torchrun, compared with one process.

The torchrun launches (a few seconds each on 2 cores) share module-scoped runs:
an uninterrupted abmil run, a killed-then-resumed one, and a psatt run whose
ranks dump their final model state.  The sharding rules are checked in-process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from milzoo import checkpoint as ckpt
from milzoo.train.distributed import Distributed
from milzoo.errors import UserError
from milzoo.runs.runner import run

# 46 bags, 2-fold CV: 23 training bags per fold = five global batches of 4 and a last one of 3,
# which 2 ranks split 1 + 2 (the loss weights make that step exact too)
N_BAGS = 46


def write_csv(path: Path, n_bags: int = N_BAGS, n_feat: int = 6) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for b in range(n_bags):
        y = b % 2
        x = rng.normal(0, 1, size=(int(rng.integers(2, 7)), n_feat))
        if y:
            x[rng.integers(len(x)), 0] += 4.0
        rows += [[y, b + 1, *inst] for inst in x]
    np.savetxt(path, np.array(rows), delimiter=",", fmt="%.6g")
    return path


def recipe_dict(csv: Path, pooling: dict) -> dict:
    return {
        "name": "dist",
        "seed": 0,
        "data": {"name": "classic", "path": str(csv)},
        "encoder": {"name": "mlp", "dims": [16]},  # no dropout: ranks draw other random numbers than one process
        "pooling": pooling,
        "loss": [{"name": "bag_ce"}],
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 3, "batch_size": 4, "progress": False, "threads": 1, "device": "cpu"},
        "protocol": {"kind": "cv", "folds": 2, "standardize": True},
    }


# Runs milzoo's CLI; with MILZOO_TEST_DUMP each rank saves its final model state per fold, and with
# MILZOO_TEST_KILL_AFTER_EPOCH rank 0 SIGKILLs itself right after writing that epoch's checkpoint.
WORKER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    import milzoo.train.trainer as T

    dump = os.environ.get("MILZOO_TEST_DUMP")
    kill_after = int(os.environ.get("MILZOO_TEST_KILL_AFTER_EPOCH", "-1"))
    fit, checkpoint = T.Trainer.fit, T.Trainer._checkpoint

    def dumping_fit(self, *args, **kwargs):
        res = fit(self, *args, **kwargs)
        if dump:
            rank = self.dist.rank if self.dist is not None else 0
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            torch.save(state, Path(dump) / f"fold{self.data.fold}-rank{rank}.pt")
        return res

    def killing_checkpoint(self, epoch):
        checkpoint(self, epoch)
        if epoch == kill_after and self.is_main:
            os.kill(os.getpid(), signal.SIGKILL)

    T.Trainer.fit, T.Trainer._checkpoint = dumping_fit, killing_checkpoint
    from milzoo.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def torchrun(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    # CPU + gloo even where GPUs are visible (one GPU cannot host two NCCL ranks)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "",
                **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def load_toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def metrics(run_dir: Path) -> list[dict]:
    recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("time_s", None)
    return recs


def assert_close_records(a: list[dict], b: list[dict], rel: float = 1e-5) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys(), (ra, rb)
        for k, va in ra.items():
            vb = rb[k]
            if isinstance(va, float) or isinstance(vb, float):
                assert math.isclose(va, vb, rel_tol=rel, abs_tol=1e-7), (k, ra, rb)
            else:
                assert va == vb, (k, ra, rb)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    csv = write_csv(root / "toy.csv")
    (root / "abmil.toml").write_text(tomli_w.dumps(recipe_dict(csv, {"name": "abmil", "attn_hidden": 8})))
    (root / "psatt.toml").write_text(tomli_w.dumps(recipe_dict(csv, {"name": "psatt", "gamma": 0.1})))
    (root / "worker.py").write_text(WORKER)
    (root / "cwd").mkdir()
    return root


@pytest.fixture(scope="module")
def abmil_dist(work) -> Path:
    out = work / "abmil-dist"
    proc = torchrun("-m", "milzoo", "run", str(work / "abmil.toml"), "--out", str(out), cwd=work / "cwd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


# ---------------------------------------------------------------------------- end to end
def test_distributed_run_matches_single_process(work, abmil_dist):
    out = abmil_dist
    assert sorted(p.name for p in out.iterdir()) == [
        "fold-00", "fold-01", "log.txt", "metrics.jsonl", "recipe.toml", "run.json", "summary.json"]
    assert list((work / "cwd").iterdir()) == []  # no rank wrote anywhere else (e.g. runs/)
    recs = metrics(out)
    keys = [(r["fold"], r["epoch"], r["split"]) for r in recs]
    assert len(keys) == len(set(keys)) == 2 * 3 * 2  # written once (rank 0), not once per rank
    single = run(load_toml(work / "abmil.toml"), out=work / "abmil-single")
    assert_close_records(recs, metrics(work / "abmil-single"))
    dist_summary = json.loads((out / "summary.json").read_text())
    for name, m in single["last"]["test"].items():
        assert np.allclose(m["values"], dist_summary["last"]["test"][name]["values"], rtol=1e-5), name
    # the gathered predictions cover the whole test split, in order
    for f in (0, 1):
        a = (out / f"fold-0{f}" / "last" / "predictions-test.csv").read_text().splitlines()
        b = (work / "abmil-single" / f"fold-0{f}" / "last" / "predictions-test.csv").read_text().splitlines()
        assert [l.split(",")[:2] for l in a] == [l.split(",")[:2] for l in b] and len(a) == N_BAGS // 2 + 1


def test_psatt_prototypes_identical_on_all_ranks(work):
    dump = work / "psatt-dump"
    dump.mkdir()
    proc = torchrun(str(work / "worker.py"), "run", str(work / "psatt.toml"), "--out", str(work / "psatt-dist"),
                    cwd=work / "cwd", env={"MILZOO_TEST_DUMP": str(dump)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run(load_toml(work / "psatt.toml"), out=work / "psatt-single")
    for f in (0, 1):
        r0 = torch.load(dump / f"fold{f}-rank0.pt")
        r1 = torch.load(dump / f"fold{f}-rank1.pt")
        assert r0.keys() == r1.keys()
        for k in r0:  # parameters (DDP) and buffers (prototypes) bit-identical across ranks
            assert torch.equal(r0[k], r1[k]), k
        q = r0["pooling.Q"]
        assert bool(r0["pooling.initialized"]) and q.abs().sum() > 0
        # ... and the same prototypes as one process: the ranks' gathered statistics arrive in batch order
        single = ckpt.load_model(work / "psatt-single" / f"fold-0{f}" / "last").state_dict()
        assert torch.allclose(q, single["pooling.Q"], atol=1e-5), (q - single["pooling.Q"]).abs().max()
    assert_close_records(metrics(work / "psatt-dist"), metrics(work / "psatt-single"))


def test_killed_distributed_run_resumes_to_the_same_result(work, abmil_dist):
    out = work / "abmil-killed"
    proc = torchrun(str(work / "worker.py"), "run", str(work / "abmil.toml"), "--out", str(out), cwd=work / "cwd",
                    env={"MILZOO_TEST_KILL_AFTER_EPOCH": "0"})
    assert proc.returncode != 0
    st = ckpt.load_training_state(out / "fold-00" / ckpt.STATE)
    assert st["epoch"] == 0 and not (out / "fold-00" / "result.json").exists()
    assert not (out / "summary.json").exists()
    # without --resume: rank 0 refuses once, the other rank stops quietly, nobody hangs
    proc = torchrun("-m", "milzoo", "run", str(work / "abmil.toml"), "--out", str(out), cwd=work / "cwd")
    assert proc.returncode != 0 and proc.stderr.count("exists already") == 1, proc.stderr[-3000:]
    proc = torchrun("-m", "milzoo", "run", str(work / "abmil.toml"), "--out", str(out), "--resume", cwd=work / "cwd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close_records(metrics(out), metrics(abmil_dist), rel=1e-6)
    a = json.loads((out / "summary.json").read_text())
    b = json.loads((abmil_dist / "summary.json").read_text())
    assert a["last"] == b["last"]


# ---------------------------------------------------------------------------- folds as separate jobs
def test_folds_as_separate_jobs_then_summarize(work):
    from milzoo.cli import main

    out = work / "per-fold"
    recipe = str(work / "abmil.toml")
    assert main(["run", recipe, "--out", str(out), "--fold", "1", "--no-progress"]) == 0
    assert not (out / "summary.json").exists()
    assert main(["summarize", str(out)]) == 2  # fold 0 missing: a clear error, exit code 2
    assert main(["run", recipe, "--out", str(out), "--fold", "0", "--no-progress"]) == 0
    first = json.loads((out / "summary.json").read_text())  # written by the job that completed the folds
    assert main(["summarize", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text()) == first
    # a fold job started again on a finished fold changes nothing
    assert main(["run", recipe, "--out", str(out), "--fold", "1", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text()) == first
    together = run(recipe, out=work / "together")
    s = json.loads((out / "summary.json").read_text())
    assert s["num_folds"] == 2 and s["last"] == together["last"]


# ---------------------------------------------------------------------------- sharding rules (no processes)
def ranks(world: int) -> list[Distributed]:
    return [Distributed(r, world, r, torch.device("cpu"), "gloo") for r in range(world)]


@pytest.mark.parametrize("n_bags,world,bs", [(23, 2, 4), (22, 2, 4), (21, 2, 4), (30, 3, 6), (7, 4, 4), (4, 2, 4)])
def test_global_batches_are_sharded_exactly(n_bags, world, bs):
    order = list(np.random.default_rng(0).permutation(n_bags))
    glob = [order[i : i + bs] for i in range(0, n_bags, bs)]
    shards = [d.shard_batches(glob, bs) for d in ranks(world)]
    steps = {len(b) for b, _ in shards}
    assert len(steps) == 1  # every rank runs the same number of steps
    seen = [i for step in range(steps.pop()) for b, _ in shards for i in b[step]]
    assert seen == order  # every bag once per epoch, rank-major within a step = the global batch order
    values = np.random.default_rng(1).normal(size=n_bags)
    start = 0
    for step in range(len(shards[0][0])):
        local = [(np.mean(values[[order.index(i) for i in b[step]]]), w[step]) for b, w in shards]
        assert all(len(b[step]) > 0 for b, _ in shards)  # nobody idles: DDP needs every rank
        n = sum(len(b[step]) for b, _ in shards)
        # DDP's average of the weighted per-rank means == the mean over the global batch
        ddp = np.mean([m * w for m, w in local])
        assert math.isclose(ddp, np.mean(values[start : start + n]), rel_tol=1e-12)
        start += n


def test_batch_size_must_split_over_ranks():
    d = ranks(4)[1]
    with pytest.raises(UserError, match=r"multiple of the 4 ranks.*batch_size=4 or 8"):
        d.shard_batches([[0, 1, 2, 3, 4, 5]], 6)
    with pytest.raises(UserError, match="fewer than the 4 ranks"):
        d.shard_batches([[0, 1, 2]], 4)


def test_eval_shards_partition_in_order_and_gather_back(monkeypatch):
    world = ranks(3)
    idx = list(range(10))
    parts = [d.shard(idx, pad=False) for d in world]
    assert [i for p in parts for i in p] == idx
    preds = [
        {"probs": np.full((len(p), 2), r, float), "y": np.array(p), "bag_ids": [f"b{i}" for i in p],
         "inst_true": None if not p else np.array(p), "inst_probs": None if not p else np.ones((len(p), 2))}
        for r, p in enumerate(parts)
    ]
    monkeypatch.setattr(Distributed, "all_gather_object", lambda self, obj: preds)
    g = world[0].gather_predictions(preds[0])
    assert g["y"].tolist() == idx and g["bag_ids"] == [f"b{i}" for i in idx]
    assert g["probs"].shape == (10, 2) and g["inst_true"].tolist() == idx
    # a rank with nothing to predict (split smaller than the world) is fine
    few = [d.shard([5, 6], pad=False) for d in world]
    assert [i for p in few for i in p] == [5, 6] and any(len(p) == 0 for p in few)


def test_ddp_wrapper_follows_frozen_parameters():
    """Freezing the encoder (PSAli's epoch 0) rebuilds DDP over the trainable parameters instead of
    searching for unused ones every step; stale gradient hooks would fail the later backwards."""
    import torch.distributed as dist
    from torch import nn

    from milzoo.train.distributed import free_port
    from milzoo.components.output import MILOutput

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return MILOutput(bag_logits=self.head(self.encoder(x)), mask=torch.ones(len(x), 1, dtype=torch.bool))

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model, x = Toy(), torch.randn(5, 3)
        fwd = Distributed(0, 1, 0, torch.device("cpu"), "gloo").wrap(model)

        def grads(frozen: bool):
            model.encoder.requires_grad_(not frozen)
            model.zero_grad(set_to_none=True)
            fwd(x).bag_logits.pow(2).sum().backward()
            return {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()}

        first = grads(False)
        frozen = grads(True)
        again = grads(False)
        assert fwd.builds == 3
        assert frozen["encoder.weight"] is None and torch.allclose(frozen["head.weight"], first["head.weight"])
        assert all(torch.allclose(first[k], again[k]) for k in first)
        assert fwd(x).bag_logits.shape == (5, 2) and fwd.builds == 3  # no rebuild while nothing changes
    finally:
        dist.destroy_process_group()


def test_fold_jobs_starting_together_share_the_run_directory(tmp_path):
    """A fold job that finds the run directory while another job is still writing recipe.toml waits for it
    (instead of refusing the directory as 'exists already')."""
    import threading
    import time

    from milzoo.recipe import load_recipe
    from milzoo.runs.runner import prepare_run_dir

    recipe = load_recipe(recipe_dict(write_csv(tmp_path / "t.csv"), {"name": "abmil"}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    partial = run_dir / ".recipe.toml.x1y2"  # the other job's atomic write in flight
    partial.write_text("name = ")

    def other_job():  # finishes its atomic write: the whole file takes the temp file's place at once
        time.sleep(0.5)
        partial.write_text(recipe.to_toml())
        partial.replace(run_dir / "recipe.toml")

    t = threading.Thread(target=other_job)
    t.start()
    prepare_run_dir(recipe, run_dir, resume=False, overwrite=False, fold=1)
    t.join()
    # a foreign, non-empty directory is still refused at once
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a milzoo run directory"):
        prepare_run_dir(recipe, tmp_path / "foreign", resume=False, overwrite=False, fold=1)


def test_run_directory_must_be_shared_by_all_machines(tmp_path, monkeypatch):
    seen = [("node-a", True), ("node-b", False)]
    monkeypatch.setattr(Distributed, "all_gather_object", lambda self, obj: seen)
    main, other = ranks(2)
    with pytest.raises(UserError, match="node-b cannot see .*shared by all machines"):
        main.require_shared(tmp_path / "recipe.toml", seconds=0)
    with pytest.raises(SystemExit) as info:  # the others stop quietly; rank 0 prints the message
        other.require_shared(tmp_path / "recipe.toml", seconds=0)
    assert info.value.code == 2
    seen[1] = ("node-b", True)
    main.require_shared(tmp_path / "recipe.toml", seconds=0)
