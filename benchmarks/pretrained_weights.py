"""Train, export and index the pretrained models that the weight distributions ship (docs/hub.md).

    .venv/bin/python benchmarks/pretrained_weights.py --list
    .venv/bin/python benchmarks/pretrained_weights.py train abmil-musk1 ...   # or `train classic`
    .venv/bin/python benchmarks/pretrained_weights.py export abmil-musk1 ...  # or `export classic`, `export all`
    .venv/bin/python benchmarks/pretrained_weights.py doc                     # the table in docs/hub.md
    ... --code DIR   run training from a git worktree pinned at one commit (recorded in each run)

`train` runs exactly ``milzoo run RECIPE --out runs/weights/NAME --no-progress --set ...`` (the command is in
the run's run.json); `export` writes the run's Hub folder (``milzoo export``) into the distribution's package
data and records the entry (recipe, overrides, held-out metrics from the run, CPU) in its ``index.json``,
which the distribution's plugin registers through ``milzoo_register_pretrained``.  The FMNIST entries come
from the FMNIST queue's runs (benchmarks/psmil_fmnist_queue.py, group ``draws``: bag draw 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "weights"

CLASSIC_MODELS = {
    "abmil": ("milzoo-abmil", "ABMIL (attention pooling)"),
    "dsmil": ("milzoo-dsmil", "DSMIL (dual-stream: critical instance + bag attention)"),
    "psatt": ("milzoo-psmil", "PSAtt (the PSMIL paper's probabilistic-sampling attention, without PSAli)"),
    "demil": ("milzoo-demil", "DEMIL"),
}
CLASSIC_SETS = {"musk1": "MUSK1", "musk2": "MUSK2", "elephant": "Elephant"}


def _entries() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for model, (dist, what) in CLASSIC_MODELS.items():
        for ds, title in CLASSIC_SETS.items():
            out[f"{model}-{ds}"] = {
                "dist": "milzoo-weights-classic", "recipe": f"recipes/classic/{model}_{ds}.toml",
                "overrides": ["protocol.repeats=1"], "requires": [dist], "datasets": [ds],
                "description": f"{what} on {title}: the 10 models of one 10-fold CV, as an ensemble (majority "
                               "vote); each member's metrics are on its own held-out fold",
                "tags": [model, "classic-mil", ds],
            }
    for model, dist, what in (("psmil", "milzoo-psmil", "PSMIL (PSAtt + PSAli, the paper's math)"),
                              ("abmil", "milzoo-abmil", "ABMIL")):
        out[f"{model}-fmnist"] = {
            "dist": "milzoo-weights-fmnist", "run": f"runs/fmnist/draw1/{model}",
            "recipe": f"recipes/psmil/fmnist/{model}.toml", "overrides": ["data.seed=1", "train.precision=fp32"],
            "requires": [dist, "milzoo-vision"], "datasets": ["fashion_mnist"],
            "description": f"{what} with the paper's 2-layer CNN trained end to end on synthetic Fashion-MNIST "
                           "bags at the reduced scale (600 training bags, bag draw 1); one model (hold-out "
                           "protocol), scored per image on all 10,000 test images",
            "tags": [model, "image-bags", "fashion-mnist"],
        }
    return out


ENTRIES = _entries()
GROUPS = {"classic": [n for n, e in ENTRIES.items() if e["dist"] == "milzoo-weights-classic"],
          "fmnist": [n for n, e in ENTRIES.items() if e["dist"] == "milzoo-weights-fmnist"]}


def _package_dir(dist: str) -> Path:
    return ROOT / "plugins" / dist / "src" / dist.replace("-", "_")


def _run_dir(name: str) -> Path:
    e = ENTRIES[name]
    return ROOT / e["run"] if "run" in e else RUNS / name


def _pinned_env(code: Path) -> dict:
    paths = [str(code)] + sorted(str(p) for p in (code / "plugins").glob("milzoo-*/src"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def machine() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
    return {"cpu": names[0] if names else "", "cores": os.cpu_count(), "avx512": "avx512f" in text,
            "avx512_bf16": "avx512_bf16" in text}


def train(name: str, code: Path | None) -> int:
    e = ENTRIES[name]
    if "run" in e:
        print(f"[weights] {name}: trained by the FMNIST queue ({e['run']}); nothing to do here", flush=True)
        return 0
    out = _run_dir(name)
    if (out / "summary.json").exists():
        print(f"[weights] {name}: done, skipped", flush=True)
        return 0
    cmd = [str(ROOT / ".venv" / "bin" / "milzoo"), "run", e["recipe"], "--out", str(out), "--no-progress"]
    cmd += ["--resume"] if (out / "recipe.toml").exists() else []
    for s in e["overrides"]:
        cmd += ["--set", s]
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"[weights] {name}: {' '.join(cmd[1:])}", flush=True)
    with open(str(out) + ".log", "a") as log:
        rc = subprocess.call(cmd, cwd=code or ROOT, stdout=log, stderr=subprocess.STDOUT,
                             env=_pinned_env(code) if code else None)
    if rc == 0:
        (out / "machine.json").write_text(json.dumps(machine(), indent=2) + "\n")
    print(f"[weights] {name}: rc {rc}", flush=True)
    return rc


def export(name: str) -> None:
    e = ENTRIES[name]
    run = _run_dir(name)
    if not (run / "summary.json").exists():
        print(f"[weights] {name}: {run} has not finished; skipped", flush=True)
        return
    pkg = _package_dir(e["dist"])
    dest = pkg / "weights" / name
    from milzoo.hub import save_pretrained

    save_pretrained(run, dest, repo_id=f"milzoo/{name}", license="apache-2.0", tags=e["tags"],
                    description=e["description"] + ".", overwrite=True)
    cfg = json.loads((dest / "config.json").read_text())
    info = json.loads((run / "run.json").read_text())
    mach = run / "machine.json"
    if "run" in e and not mach.exists():  # the FMNIST queue keeps it with the committed copy of the run
        mach = ROOT / "benchmarks" / "results" / e["run"].removeprefix("runs/") / "machine.json"
    cpu = json.loads(mach.read_text()) if mach.exists() else {}
    if "sessions" in cpu:
        cpu = cpu["sessions"][-1]
    _zoo_section(dest, name, e, info.get("git_sha"), cpu)
    index_path = pkg / "weights" / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[name] = {
        "recipe": e["recipe"], "overrides": e["overrides"], "requires": e["requires"], "datasets": e["datasets"],
        "description": e["description"], "tags": e["tags"], "license": "apache-2.0",
        "repo_id": f"milzoo/{name}", "revision": None,
        "metrics": (cfg.get("metrics") or {}).get("splits", {}), "git_sha": info.get("git_sha"),
        "trained_on": {k: cpu.get(k) for k in ("cpu", "cores", "avx512", "avx512_bf16")},
    }
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"[weights] {name}: exported to {dest.relative_to(ROOT)} ({size / 1e6:.2f} MB)", flush=True)


def _zoo_section(dest: Path, name: str, e: dict, sha: str | None, cpu: dict) -> None:
    """Add to the model card how the installed distribution loads it, and where and from what it was trained."""
    card = (dest / "README.md").read_text()
    isa = "AVX-512" + (" with bf16" if cpu.get("avx512_bf16") else "") if cpu.get("avx512") else "AVX2"
    text = (
        f"## In milzoo's zoo\n\n"
        f"`pip install {e['dist']}` ships this folder inside the package, so it loads by name with no network:\n\n"
        f"```python\nimport milzoo\nmodel = milzoo.load_pretrained(\"{name}\")\n```\n\n"
        f"`milzoo verify {name}` measures it again on the held-out data its recipe defines and compares every "
        "metric below with the recorded one.\n\n"
        f"Trained from milzoo commit `{sha}` with `{e['recipe']}` and `{' '.join('--set ' + o for o in e['overrides'])}` "
        f"on {cpu.get('cpu') or 'an unrecorded CPU'} ({isa}, {cpu.get('cores')} cores), in fp32 on the CPU. Results "
        "in fp32 can differ in the last digits on another CPU type.\n\n"
    )
    card = card.replace("## How to use", text + "## How to use", 1)
    (dest / "README.md").write_text(card)


DOC = ROOT / "docs" / "hub.md"
START, END = "<!-- shipped-weights:start -->", "<!-- shipped-weights:end -->"


def table() -> str:
    """The shipped entries and their recorded held-out metrics, from the distributions' index.json files."""
    rows = ["| entry | distribution | held-out split | acc | AUC | size | trained on |", "|---|---|---|---|---|---|---|"]
    for dist in ("milzoo-weights-classic", "milzoo-weights-fmnist"):
        path = _package_dir(dist) / "weights" / "index.json"
        index = json.loads(path.read_text()) if path.exists() else {}
        for name, e in sorted(index.items()):
            folder = path.parent / name
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
            cpu = e.get("trained_on") or {}
            isa = ("AVX-512" if cpu.get("avx512") else "AVX2") if cpu else "?"
            for split, m in e["metrics"].items():
                sd = json.loads((folder / "config.json").read_text()).get("metrics", {}).get("std", {}).get(split, {})
                def cell(k):
                    return f"{m[k]:.3f}" + (f" ± {sd[k]:.3f}" if k in sd else "") if k in m else "-"
                rows.append(f"| `{name}` | {dist} | {split} | {cell('acc')} | {cell('auc')} | {size:.1f} MB | "
                            f"{cpu.get('cpu', '?')}, {isa}, fp32 |")
    return "\n".join(rows)


def write_doc() -> None:
    text = DOC.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    DOC.write_text(text[:a] + "\n" + table() + "\n" + text[b:])
    print(f"[weights] wrote the table of shipped entries into {DOC.relative_to(ROOT)}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", nargs="?", choices=["train", "export", "doc"])
    p.add_argument("names", nargs="*")
    p.add_argument("--list", action="store_true")
    p.add_argument("--code", type=Path)
    args = p.parse_args(argv)
    names: list[str] = []
    for n in args.names:
        names += GROUPS.get(n, list(ENTRIES) if n == "all" else [n])
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        p.error(f"unknown entries {unknown}; see --list")
    if args.action == "doc":
        write_doc()
        return 0
    if args.list or not args.action:
        for n, e in ENTRIES.items():
            state = "done" if (_run_dir(n) / "summary.json").exists() else "pending"
            print(f"{state:8s} {n:20s} {e['dist']:24s} {e['recipe']} {' '.join(e['overrides'])}")
        return 0
    rc = 0
    for n in names:
        rc |= train(n, args.code.resolve() if args.code else None) if args.action == "train" else (export(n) or 0)
    if args.action == "export":
        write_doc()
    return rc


if __name__ == "__main__":
    sys.exit(main())
