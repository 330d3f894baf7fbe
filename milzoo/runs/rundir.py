"""The run directory: its layout, the checks before a run writes into it, and the files the run keeps there.

Layout::

    RUN/
      recipe.toml        the resolved recipe (every default filled in)
      run.json           command, time, versions of milzoo, libraries and plugins; how each start ended
      metrics.jsonl      one JSON object per evaluation (fold, epoch, split, metrics)
      summary.json       final metrics: per fold, mean and std, ensemble
      log.txt            the run's log
      fold-00/
        last/            model.safetensors + config.json (+ predictions-<split>.csv)
        best/            the validation-selected model (when a validation split exists)
        state.safetensors  everything --resume needs (model, optimiser, RNG, history)
        result.json      the fold's final result (written when the fold is complete)
      .lock              while a start runs: its pid, host and start time (.lock.fold-NN for a --fold job)

This module owns the directory as a whole: deciding whether a run may start, continue or replace it
(``check_run_dir``, ``prepare_run_dir``), removing the temp files of writes a kill interrupted, the run record
(``run.json``, :class:`RunRecord`), ``metrics.jsonl`` (:class:`MetricsWriter`, :func:`trim_metrics`) and
``log.txt`` (:func:`log_to_file`).  What one fold folder holds is :mod:`milzoo.runs._fold`'s.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
import unicodedata
from pathlib import Path
from typing import Callable

from milzoo._atomic import atomic_write_json, atomic_write_text
from milzoo._untrusted import read_json
from milzoo.checkpoint import STATE
from milzoo.errors import RunDirError, TrainingDiverged
from milzoo.recipe import Recipe, read_toml, validate_recipe
from milzoo.runs.environment import environment

log = logging.getLogger(__name__)

RECIPE = "recipe.toml"
RUN_RECORD = "run.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOG = "log.txt"
#: a fold folder's final result: the fold is complete once it exists
FOLD_RESULT = "result.json"

#: recipe keys (section, key) that may differ between a run and its ``--resume``: they change how the run
#: executes (progress display, loader workers, device, torch threads), never what it computes
RESUME_FREE_KEYS = {("train", "progress"), ("train", "num_workers"), ("train", "device"), ("train", "threads")}

#: what a fold folder holds once it has trained anything
_FOLD_RESULTS = (STATE, FOLD_RESULT, "last", "best")
#: files written atomically in a run directory (a kill mid-write leaves ``.<name>.<random>`` beside them)
_ATOMIC_NAMES = re.compile(r"^\.(recipe\.toml|run\.json|summary\.json|metrics\.jsonl|result\.json|"
                           r"state\.safetensors|model\.safetensors|config\.json|predictions-.+\.csv)\.[A-Za-z0-9_]{8}$")
#: the logger every core module's logger propagates to (modules log under their own ``__name__``)
_PACKAGE_LOGGER = "milzoo"


def fold_dir(run_dir: Path, fold: int) -> Path:
    """The folder of fold ``fold``: ``RUN/fold-NN``."""
    return Path(run_dir) / f"fold-{fold:02d}"


def fold_is_complete(run_dir: Path, fold: int) -> bool:
    """Whether fold ``fold`` finished (its ``result.json`` exists)."""
    return (fold_dir(run_dir, fold) / FOLD_RESULT).exists()


# --------------------------------------------------------------------------- the default folder

#: characters a default run folder keeps from the recipe's name; every other one becomes "_"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
#: the longest default folder name (a file name may have 255 bytes; the run's temp files add a suffix)
MAX_NAME = 100


def printable(text: object) -> str:
    """``text`` as it can be shown on a terminal: control, format (bidi overrides such as U+202E), line and
    paragraph separators and unassigned characters are escaped (``\\x1b``, ``\\u202e``), the rest kept."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def folder_name(name: str) -> str:
    """The default run folder's name for a recipe ``name`` (``runs/<this>``): every character other than
    ``A-Z a-z 0-9 . _ -`` becomes ``_`` (so ``/`` never nests nor escapes ``runs/``), cut to :data:`MAX_NAME`
    characters.  A name that leaves nothing but dots (``""``, ``"."``, ``".."``) is refused."""
    safe = _SAFE_NAME.sub("_", str(name))[:MAX_NAME]
    if not safe.strip("."):
        raise RunDirError(
            f"the recipe name {printable(repr(name))} cannot name a run folder (it leaves {safe!r}); give the run "
            "a folder with --out DIR, or set the recipe's name to letters, digits, '.', '_' or '-'.")
    return safe


def default_run_dir(recipe: Recipe) -> Path:
    """Where a run goes without ``--out``: ``runs/<folder_name(recipe name)>``."""
    return Path("runs") / folder_name(recipe.root.name)


# --------------------------------------------------------------------------- checks and preparation


def _without_resume_free_keys(resolved: dict) -> dict:
    """A copy of a resolved recipe (``Recipe.to_dict()``) without :data:`RESUME_FREE_KEYS`, to compare a run's
    stored recipe with the one it is resumed with.  The JSON round trip is a deep copy that also makes both
    sides plain JSON values (tuples become lists), so equal recipes compare equal."""
    copy = json.loads(json.dumps(resolved))
    for section, key in RESUME_FREE_KEYS:
        copy.get(section, {}).pop(key, None)
    copy.pop("log", None)  # experiment loggers watch a run, never change it: a resume may add or drop them
    return copy


def _await_recipe(run_dir: Path, seconds: float = 30.0) -> None:
    """Per-fold jobs (a Slurm array) may start together: wait while another one is writing recipe.toml."""
    deadline = time.monotonic() + seconds
    while not (run_dir / RECIPE).exists() and time.monotonic() < deadline:
        if not any(p.name.startswith(f".{RECIPE}.") for p in run_dir.iterdir()):
            return  # nobody is writing it
        time.sleep(0.1)


def holds_results(run_dir: Path) -> bool:
    """Whether a run directory holds anything a run produced (a checkpoint, a result, a metric line)."""
    if (run_dir / SUMMARY).exists():
        return True
    metrics = run_dir / METRICS
    if metrics.exists() and metrics.stat().st_size > 0:
        return True
    return any((folder / name).exists() for folder in run_dir.glob("fold-*") for name in _FOLD_RESULTS)


def remove_orphaned_temp_files(directory: Path) -> list[Path]:
    """Delete the temp files of atomic writes interrupted by a kill (``.state.safetensors.ab12cd34``...)."""
    removed = []
    if not directory.is_dir():
        return removed
    for sub in (directory, *(p for p in directory.iterdir() if p.is_dir())):
        for p in sub.iterdir():
            if p.is_file() and _ATOMIC_NAMES.match(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
    for p in removed:
        log.info("removed %s, left by a write that was interrupted (the file it was replacing is intact)", p)
    return removed


def _contents(run_dir: Path) -> list[Path]:
    """What a run directory holds, its lock files (:class:`RunLock`) aside."""
    return [p for p in run_dir.iterdir() if not _LOCK_NAMES.match(p.name)]


def _refuse_runs_inside(run_dir: Path) -> None:
    """Replacing ``run_dir`` must never delete another run kept inside it (``--out A`` over ``A/B``)."""
    inside = sorted({p.parent for name in (RECIPE, RUN_RECORD) for p in run_dir.rglob(name)
                     if p.parent != run_dir})
    if inside:
        shown = ", ".join(printable(p) for p in inside[:5]) + (f" and {len(inside) - 5} more" if len(inside) > 5 else "")
        raise RunDirError(
            f"refusing to replace {printable(run_dir)}: it holds other run director{'ies' if len(inside) > 1 else 'y'} "
            f"({shown}), which --overwrite would delete. Move them out of {printable(run_dir)}, or give this run "
            "another --out.")


def _dangling(link: Path, run_dir: Path) -> RunDirError:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    where = "" if link == run_dir else f" (in --out {printable(run_dir)})"
    return RunDirError(f"{printable(link)}{where} is a symbolic link to {printable(target)}, which does not exist, so "
                       "the run cannot be written there. Create that folder (or fix the link), or give another --out.")


def _check_out_path(run_dir: Path) -> None:
    if run_dir.is_symlink() and not run_dir.exists():
        raise _dangling(run_dir, run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file, not a directory; give a directory for the run (new or "
                          "existing).")
    for parent in run_dir.parents:
        if parent.is_symlink() and not parent.exists():
            raise _dangling(parent, run_dir)
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"--out {run_dir} cannot be created: {parent} is a file. Choose another --out.")
            break


def _refuse_replacing_through_a_link(run_dir: Path) -> None:
    """``--overwrite`` of ``--out LINK`` would empty the folder the link points to, which may be another run."""
    if run_dir.is_symlink():
        target = run_dir.resolve()
        raise RunDirError(
            f"--out {printable(run_dir)} is a symbolic link to {printable(target)}; --overwrite would delete the run "
            f"there through the link, so it is refused. To replace that run, give its own folder (--out "
            f"{printable(target)} --overwrite); otherwise choose another --out.")


def _check_same_recipe(recipe: Recipe, run_dir: Path) -> None:
    """Refuse to continue a run with a recipe other than the one it started with (resume-free keys aside)."""
    if not (run_dir / RECIPE).exists():
        raise RunDirError(f"{run_dir} is not a milzoo run directory (no recipe.toml); cannot resume it.")
    stored = validate_recipe(read_toml(run_dir / RECIPE), str(run_dir / RECIPE)).to_dict()
    if _without_resume_free_keys(stored) != _without_resume_free_keys(recipe.to_dict()):
        raise RunDirError(
            f"the recipe differs from the one {run_dir} was started with, so it cannot be resumed into it. "
            "Run the original recipe (it is saved as recipe.toml in the run directory: "
            f"`milzoo run {run_dir / RECIPE} --out {run_dir} --resume`) or use a new --out."
        )


def check_run_dir(recipe: Recipe, run_dir: Path, resume: bool, overwrite: bool, fold: int | None) -> str:
    """Decide, without changing anything, what the run does with its directory.

    Returns ``"new"`` (create it), ``"continue"`` (``--resume``, or a per-fold job joining a run) or
    ``"replace"`` (``--overwrite`` of a run, or a failed start that holds no results).  Raises
    :class:`RunDirError` with the fix otherwise.
    """
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                          "--overwrite replaces it. Pass one of them.")
    _check_out_path(run_dir)
    if not (run_dir.exists() and _contents(run_dir)):
        if resume:
            state = "is empty (no run was started there)" if run_dir.exists() else "does not exist"
            raise RunDirError(f"nothing to resume: {run_dir} {state}. Run without --resume to start it.")
        return "new"
    if fold is not None and not resume:
        _await_recipe(run_dir)
    if resume or (fold is not None and (run_dir / RECIPE).exists()):
        _check_same_recipe(recipe, run_dir)
        return "continue"
    is_run = (run_dir / RECIPE).exists() or (run_dir / METRICS).exists()
    if not is_run:
        raise RunDirError(
            f"{run_dir} is not empty and is not a milzoo run directory; refusing to "
            f"{'--overwrite' if overwrite else 'write into'} it. Choose another --out."
        )
    if not overwrite and holds_results(run_dir):
        raise RunDirError(
            f"the run directory {run_dir} exists already and holds results. Choose another --out, pass "
            "--resume to continue that run, or --overwrite to replace it."
        )
    _refuse_runs_inside(run_dir)
    if overwrite:
        _refuse_replacing_through_a_link(run_dir)
    return "replace"  # --overwrite, or a start that failed before any result (only its log is replaced)


def prepare_run_dir(recipe: Recipe, run_dir: Path, resume: bool, overwrite: bool, fold: int | None) -> None:
    """Create, continue or replace the run directory (rank 0 only when distributed).

    Call it once the data has loaded: ``--overwrite`` removes the old run only here.  The directory is
    checked again (``run`` checked it before loading the data, to fail early), because a per-fold job
    started beside this one may have created it meanwhile.
    """
    action = check_run_dir(recipe, run_dir, resume, overwrite, fold)
    if action == "continue":
        return
    if action == "replace":
        if not overwrite:
            log.info("replacing %s: an earlier start there failed before writing any result", run_dir)
        for path in _contents(run_dir):  # the lock files stay: this start holds one of them
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RECIPE, recipe.to_toml())


# --------------------------------------------------------------------------- locks

#: a run's lock file (``.lock``) and a per-fold job's (``.lock.fold-03``), both directly in the run directory
_LOCK_NAMES = re.compile(r"^\.lock(\.fold-\d+)?$")
#: a lock file that cannot be read is being written; one unreadable for longer than this was left by a crash
_UNREADABLE_LOCK_S = 10.0


class RunLock:
    """The lock of a run directory, or of one fold of it (``--fold I``): a file created with ``O_EXCL`` holding
    the pid, host and start time of the start that holds it.

    A whole run holds ``RUN/.lock`` and refuses to start while a per-fold job holds a fold's lock; a per-fold
    job holds ``RUN/.lock.fold-NN`` and refuses while a whole run holds ``RUN/.lock``, so different folds
    still run in parallel.  A lock left by a dead process of this host is taken over, with a note; a lock of
    another host is respected (its process cannot be checked from here) and named in the error.
    """

    def __init__(self, path: Path, created_dirs: list[Path]):
        self.path = path
        self.created_dirs = created_dirs  # the run directory and the parents this start created, deepest first

    @staticmethod
    def path_for(run_dir: Path, fold: int | None) -> Path:
        return Path(run_dir) / (".lock" if fold is None else f".lock.fold-{fold:02d}")

    @classmethod
    def acquire(cls, run_dir: Path, fold: int | None = None) -> RunLock:
        """Take the lock (creating ``run_dir`` when needed) or raise :class:`RunDirError` naming its holder."""
        run_dir = Path(run_dir)
        created = [p for p in (run_dir.absolute(), *run_dir.absolute().parents) if not p.exists()]
        if created:
            run_dir.mkdir(parents=True, exist_ok=True)
        path = cls.path_for(run_dir, fold)
        mine = False
        try:
            cls._create(path)
            mine = True
            # the other kind of lock: a whole run excludes every fold job, a fold job the whole run
            others = [p for p in run_dir.iterdir() if _LOCK_NAMES.match(p.name) and p != path
                      and (fold is None or p.name == ".lock")]
            for other in others:
                holder = _read_lock(other)
                if holder is not None and not _is_stale(holder):
                    raise RunDirError(_held_message(run_dir, other, holder))
        except BaseException:
            if mine:
                path.unlink(missing_ok=True)
            cls._remove_created(created)
            raise
        return cls(path, created)

    @staticmethod
    def _create(path: Path) -> None:
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                           "command": sys.argv}).encode()
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(path)
                if holder is None and time.time() - _mtime(path) < _UNREADABLE_LOCK_S:
                    raise RunDirError(f"{printable(path.parent)} is being locked by another start of milzoo right "
                                      "now; wait for it to end, or give this run another --out.") from None
                if holder is not None and not _is_stale(holder):
                    raise RunDirError(_held_message(path.parent, path, holder)) from None
                log.warning("taking over the lock %s left by %s, which is no longer running", path,
                            _holder_text(holder) if holder else "a start that crashed while writing it")
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "wb") as fh:
                fh.write(mine)
            return
        raise RunDirError(f"another start of milzoo took the lock {printable(path)} at the same moment; wait for "
                          "it to end, or give this run another --out.")

    def release(self) -> None:
        """Remove the lock (and the run directory this start created, when nothing else is in it)."""
        if (_read_lock(self.path) or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self._remove_created(self.created_dirs)

    @staticmethod
    def _remove_created(created: list[Path]) -> None:
        """Remove the folders this start created while they are empty, deepest first (``--out runs/a/b`` that
        failed before writing anything leaves no ``runs/a``)."""
        for folder in created:
            try:
                if not folder.is_dir() or any(folder.iterdir()):
                    return
                folder.rmdir()
            except OSError:  # another start wrote into it meanwhile
                return

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_lock(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _is_stale(holder: dict) -> bool:
    """Whether a lock's holder is a process of this host that no longer runs (another host's never is)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False  # it exists (another user's), or cannot be asked: respect the lock
    return False


def _holder_text(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on host {printable(holder.get('host'))} (started "
            f"{printable(holder.get('started', '?'))})")


def _held_message(run_dir: Path, path: Path, holder: dict) -> str:
    what = "a per-fold job (" + path.name.removeprefix(".lock.") + ")" if path.name != ".lock" else "a run"
    other_host = holder.get("host") != socket.gethostname()
    fix = ("if that machine's run has ended, delete " + printable(path) if other_host else
           "wait for it to end (or stop it), then continue with --resume")
    return (f"the run directory {printable(run_dir)} is in use by {what}: {_holder_text(holder)}, lock file "
            f"{printable(path)}. Two starts writing one run would corrupt it; {fix}, or give this run another --out.")


# --------------------------------------------------------------------------- run.json


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm, Kubernetes, ``kill``): the command line raises it in the main thread, and a run treats it
    as Ctrl-C (its last checkpoint stays, ``run.json`` records ``"terminated"``), then exits with 143."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class RunRecord:
    """``run.json``: what started the run (command, recipe, versions, plugins) and how each start ended.

    Use the record of a start as a context manager around the start's work: leaving it writes the outcome
    ("finished", "diverged", "interrupted", "terminated" (SIGTERM) or "failed", with the error's message) at the top level and in the
    start's ``history`` entry, so a run directory that stopped says why without its log, and tables built from
    copied run directories can tell a diverged run from a killed one (a start killed outright records
    nothing: its run.json has no ``outcome``).
    """

    def __init__(self, path: Path, info: dict):
        self.path = path
        self.info = info

    @classmethod
    def start(cls, run_dir: Path, recipe: Recipe, resume: bool, fold: int | None,
              data: dict | None = None) -> RunRecord:
        """Write run.json for a start of the run (its earlier starts stay in ``history``); ``data``: what the
        dataset says a run should record of it (e.g. slides' patient column and patch sizes)."""
        path = run_dir / RUN_RECORD
        info = {"started": _now(), "command": sys.argv, "resume": resume, "fold": fold,
                "recipe_source": recipe.source, **environment()}
        if data:
            info["data"] = data
        history = _previous_info(path).get("history", [])
        # each start's hardware too: a resumed run may continue on another machine
        info["history"] = history + [{"started": info["started"], "resume": resume, "fold": fold,
                                      "machine": info["machine"]}]
        atomic_write_json(path, info)
        return cls(path, info)

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.end("finished")
        elif isinstance(exc, TrainingDiverged):
            self.end("diverged", str(exc))
        elif isinstance(exc, Terminated):
            self.end("terminated")
        elif isinstance(exc, KeyboardInterrupt):
            self.end("interrupted")
        else:
            self.end("failed", f"{type(exc).__name__}: {exc}")
        return False  # the run's own error goes on

    def end(self, outcome: str, error: str = "") -> None:
        """Record how this start ended."""
        entry = {"ended": _now(), "outcome": outcome}
        if error:
            entry["error"] = error
        self.info.update(entry)
        self.info["history"][-1].update(entry)
        try:
            atomic_write_json(self.path, self.info)
        except OSError as exc:  # never let the bookkeeping hide the run's own error
            log.warning("could not record the outcome %r in %s: %s", outcome, self.path, exc)


def _previous_info(path: Path) -> dict:
    """run.json of the earlier starts (for its history); a damaged one is replaced, with a warning."""
    if not path.exists():
        return {}
    try:
        info = read_json(path, "run information", RunDirError)
    except RunDirError as exc:
        log.warning("%s; it only holds the run's history, so a new one is written", exc)
        return {}
    if not isinstance(info, dict) or not isinstance(info.get("history", []), list):
        log.warning("%s is not a run.json written by milzoo; a new one is written", path)
        return {}
    return info


# --------------------------------------------------------------------------- metrics.jsonl


class MetricsWriter:
    """Appends one evaluation record (fold, epoch, split, metrics) per line to ``metrics.jsonl``.

    NaN (an undefined metric) is written as ``null``.  ``enabled=False`` (the ranks other than 0 of a
    distributed run) writes nothing.
    """

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def __call__(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")
            fh.flush()


def trim_metrics(run_dir: Path, keep: Callable[[dict], bool]) -> None:
    """Keep only the ``metrics.jsonl`` records for which ``keep(record)`` holds (and drop half-written lines).

    The file is rewritten only when something is dropped: per-fold jobs beside this one may be appending.
    """
    path = run_dir / METRICS
    if not path.exists():
        return
    kept = []
    lines = path.read_text().splitlines()
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written line from a killed run
        if keep(record):
            kept.append(json.dumps(record))
    if len(kept) == len(lines):
        return
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# --------------------------------------------------------------------------- log.txt


def log_to_file(run_dir: Path, tag: str = "", replace: bool = False) -> logging.Handler:
    """Send every core module's log records (at INFO and above) to ``RUN/log.txt``; return the handler.

    The handler sits on the ``milzoo`` logger, which each module's ``getLogger(__name__)`` propagates to.
    ``tag`` marks the lines (``"[worker] "``); ``replace`` first removes the handlers there already (a forked
    worker must not write through its parent's file object).  Remove it with :func:`stop_log_to_file`.
    """
    logger = logging.getLogger(_PACKAGE_LOGGER)
    if replace:
        for old in list(logger.handlers):
            logger.removeHandler(old)
    handler = logging.FileHandler(run_dir / LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def stop_log_to_file(handler: logging.Handler) -> None:
    """Detach and close a handler of :func:`log_to_file`."""
    logging.getLogger(_PACKAGE_LOGGER).removeHandler(handler)
    handler.close()
