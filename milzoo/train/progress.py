"""Progress of a run: the fold being trained out of how many, its epochs, and an ETA for the whole run.

A run tells a :class:`RunObserver` when a fold starts, when each of its epochs is done (with the epoch's metric
records, those of ``metrics.jsonl``) and when the fold ends.  :class:`RunProgress` shows it:

- on a terminal, a bar for the run (the fold in training out of how many, epochs done of folds × epochs, the
  ETA of the whole run) above one bar per fold in training (its epochs, the training loss and the figures of
  the fold's validation split, else test); when the run ends the bars give way to a short table, one row per
  fold;
- on a pipe or a log file (``milzoo run ... > out.txt 2>&1``, Slurm, nohup), where a bar's carriage-return
  redraws would pile up into one endless line: one line per epoch that names the split of every figure, then
  the same table::

      fold 2 [3/10]  epoch 13 [14/40]  train loss 0.512  val loss 0.430  val acc 0.800  (1.2s, run ETA 0:03:12)

Every epoch's line also goes to the run's log (``log.txt``), shown or not.  Folds and epochs are numbered from 0
everywhere, as in ``metrics.jsonl`` and ``log.txt``; ``[k/n]`` beside a number counts (the 14th of 40 epochs).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import IO, Any

log = logging.getLogger(__name__)

#: metrics shown per epoch (beside the loss), of the validation split, else test
SHOWN_METRICS = ("acc", "auc", "inst_acc", "r2", "rmse", "c_index")


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def clock(seconds: float) -> str:
    """``0:03:12``; ``?`` while unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def duration(seconds: float) -> str:
    """``12.3s`` under a minute, else ``0:03:12``."""
    return f"{seconds:.1f}s" if 0 <= seconds < 60 else clock(seconds)


def shown_split(names: Any) -> str | None:
    """The split whose figures an epoch's line shows: validation where it exists, else test, else the first."""
    names = [n for n in names if n != "train"]
    for preferred in ("val", "test"):
        if preferred in names:
            return preferred
    return names[0] if names else None


def epoch_figures(records: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """``(split, metric, value)`` an epoch's line shows: the training loss, then the loss and a few metrics of
    :func:`shown_split`."""
    by_split = {r.get("split"): r for r in records}
    out: list[tuple[str, str, float]] = []
    train = by_split.get("train", {})
    if isinstance(train.get("loss"), (int, float)):
        out.append(("train", "loss", float(train["loss"])))
    split = shown_split(by_split)
    if split is not None:
        rec = by_split[split]
        for k in ("loss", *SHOWN_METRICS):
            v = rec.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append((split, k, float(v)))
            elif k in rec and v is None:  # undefined (NaN written as null)
                out.append((split, k, math.nan))
    return out


def figures_text(figures: list[tuple[str, str, float]], sep: str = "  ") -> str:
    return sep.join(f"{split} {name} {value:.3f}" for split, name, value in figures)


class RunObserver:
    """What a run says of its progress; every method does nothing unless overridden.

    ``fold_started`` once a fold's saved state is read (``first_epoch``: the epoch it continues with, 0 for a
    fresh fold), ``epoch_done`` after each epoch's checkpoint with its metric records (train first, then each
    evaluated split), ``fold_done`` with the fold's result, ``close`` when the start ends.
    """

    def fold_started(self, fold: int, first_epoch: int, epochs: int) -> None:
        pass

    def epoch_done(self, fold: int, epoch: int, records: list[dict[str, Any]]) -> None:
        pass

    def fold_done(self, fold: int, result: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Observers(RunObserver):
    """Several observers as one, told in order."""

    def __init__(self, observers: list[RunObserver]):
        self.observers = [o for o in observers if o is not None]

    def fold_started(self, fold: int, first_epoch: int, epochs: int) -> None:
        for o in self.observers:
            o.fold_started(fold, first_epoch, epochs)

    def epoch_done(self, fold: int, epoch: int, records: list[dict[str, Any]]) -> None:
        for o in self.observers:
            o.epoch_done(fold, epoch, records)

    def fold_done(self, fold: int, result: dict[str, Any]) -> None:
        for o in self.observers:
            o.fold_done(fold, result)

    def close(self) -> None:
        for o in self.observers:
            o.close()


class EpochProgress:
    """One fold's epochs: a tqdm bar on a terminal (at ``position``), one plain line per epoch otherwise.

    ``update(postfix)`` once per finished epoch: the line reads ``{desc} epoch E [k/n]  {postfix}  (time)``, with
    ``E`` numbered from 0 as in ``metrics.jsonl``; ``initial`` epochs were done before (a resumed fold).
    """

    def __init__(self, total: int, initial: int, desc: str, stream: IO[str] | None = None,
                 position: int | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.done, self.desc = total, initial, desc
        self._t0 = time.perf_counter()
        self._bar = None
        if _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                             file=self.stream, position=position, unit="epoch", mininterval=0,
                             bar_format="{desc} |{bar:12}| {n_fmt}/{total_fmt} epochs [{elapsed}<{remaining}]"
                                        "{postfix}")

    def update(self, postfix: dict[str, Any] | str, note: str = "") -> str:
        """Count one more epoch; return its plain line (written when there is no bar)."""
        self.done += 1
        now = time.perf_counter()
        shown = postfix if isinstance(postfix, str) else "  ".join(f"{k} {v}" for k, v in postfix.items())
        line = (f"{self.desc}  epoch {self.done - 1} [{self.done}/{self.total}]  {shown}  "
                f"({now - self._t0:.1f}s{note})")
        self._t0 = now
        if self._bar is not None:
            self._bar.set_description_str(f"{self.desc} epoch {self.done - 1}", refresh=False)
            self._bar.set_postfix_str(shown.replace("  ", ", "), refresh=False)
            self._bar.update(1)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()
        return line

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class RunProgress(RunObserver):
    """The progress of a whole run (module docstring): a run bar and fold bars on a terminal, lines elsewhere,
    one line per epoch in the log, a table of the folds at the end.

    ``epochs``: epochs per fold; ``folds``: how many folds this start trains (the run's ETA counts folds × epochs,
    less the epochs resumed folds had done and those early stopping skipped); ``num_folds``: the run's folds
    (the ``n`` of ``fold i [k/n]``; None: no count).  ``show=False`` writes only the log lines.
    """

    def __init__(self, epochs: int, folds: int, num_folds: int | None = None, stream: IO[str] | None = None,
                 show: bool = True):
        self.epochs, self.num_folds = epochs, num_folds
        self.stream = stream if stream is not None else sys.stderr
        self.show = show
        self.terminal = show and _is_terminal(self.stream)
        self.total = folds * epochs  # epochs this start trains, corrected as folds start and stop
        self.done = 0
        self._t0 = time.perf_counter()
        self._folds: dict[int, dict[str, Any]] = {}  # fold -> its bar, slot, epochs, last figures, time
        self._rows: list[dict[str, Any]] = []
        self._run_bar = None
        if self.terminal:
            from tqdm.auto import tqdm

            self._run_bar = tqdm(total=self.total, desc="run", leave=False, dynamic_ncols=True, file=self.stream,
                                 position=0, unit="epoch", mininterval=0,
                                 bar_format="{desc}  {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} epochs "
                                            "[{elapsed} elapsed, run ETA {remaining}]")

    # ------------------------------------------------------------------ observer
    def fold_started(self, fold: int, first_epoch: int, epochs: int) -> None:
        self.total -= min(first_epoch, self.epochs)  # epochs a resumed fold had done are no work of this start
        slot = min(set(range(len(self._folds) + 1)) - {f["slot"] for f in self._folds.values()})
        bar = EpochProgress(epochs, first_epoch, self._fold_label(fold),
                            stream=self.stream if self.show else _Discard(), position=1 + slot)
        self._folds[fold] = {"bar": bar, "slot": slot, "first": first_epoch, "last": first_epoch - 1,
                             "figures": [], "t0": time.perf_counter()}
        self._refresh_run_bar()

    def epoch_done(self, fold: int, epoch: int, records: list[dict[str, Any]]) -> None:
        state = self._folds.get(fold)
        if state is None:  # told of an epoch without its fold's start: count on from it
            self.fold_started(fold, epoch, self.epochs)
            state = self._folds[fold]
        self.done += 1
        state["last"] = epoch
        state["figures"] = epoch_figures(records)
        line = state["bar"].update(figures_text(state["figures"]), note=f", run ETA {clock(self.eta())}")
        log.info("%s", line)
        if self._run_bar is not None:
            self._run_bar.update(1)
            self._refresh_run_bar()

    def fold_done(self, fold: int, result: dict[str, Any]) -> None:
        state = self._folds.pop(fold, None)
        if state is None:
            return
        state["bar"].close()
        self.total -= max(0, self.epochs - (state["last"] + 1))  # epochs early stopping skipped
        self._rows.append({"fold": fold, "epochs": result.get("epochs_run", state["last"] + 1),
                           "early": bool(result.get("stopped_early")), "time": time.perf_counter() - state["t0"],
                           "figures": state["figures"]})
        self._refresh_run_bar()

    def close(self) -> None:
        for state in self._folds.values():
            state["bar"].close()
        self._folds.clear()
        if self._run_bar is not None:
            self._run_bar.close()
            self._run_bar = None
        if self.show and self._rows:
            self.stream.write(self.table() + "\n")
            self.stream.flush()

    # ------------------------------------------------------------------ figures
    def eta(self) -> float:
        """Seconds left in this start, at the pace of its epochs so far (NaN before the first)."""
        if self.done == 0:
            return math.nan
        return (time.perf_counter() - self._t0) / self.done * max(self.total - self.done, 0)

    def table(self) -> str:
        """One row per fold trained in this start: epochs, time and the last epoch's figures."""
        columns = list(dict.fromkeys(f"{s} {m}" for row in self._rows for s, m, _ in row["figures"]))
        rows = [["fold", "epochs", "time", *columns]]
        for row in sorted(self._rows, key=lambda r: r["fold"]):
            values = {f"{s} {m}": f"{v:.3f}" for s, m, v in row["figures"]}
            rows.append([str(row["fold"]), f"{row['epochs']}{' (early stop)' if row['early'] else ''}",
                         duration(row["time"]), *(values.get(c, "-") for c in columns)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def _fold_label(self, fold: int) -> str:
        return f"fold {fold}" if self.num_folds is None else f"fold {fold} [{fold + 1}/{self.num_folds}]"

    def _refresh_run_bar(self) -> None:
        if self._run_bar is None:
            return
        active = sorted(self._folds)
        if len(active) == 1:
            desc = f"run: {self._fold_label(active[0])}"
        elif active:
            desc = f"run: folds {', '.join(map(str, active))}" + (f" [of {self.num_folds}]" if self.num_folds else "")
        else:
            desc = "run"
        self._run_bar.total = max(self.total, self.done)
        self._run_bar.set_description_str(desc, refresh=False)
        self._run_bar.refresh()


class _Discard:
    """A stream that keeps nothing (fold lines when only the log gets them)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def as_observer(progress: Any, epochs: int) -> tuple[RunObserver | None, bool]:
    """What :meth:`milzoo.train.Trainer.fit` reports to: ``(observer, owned)``; ``progress`` is a
    :class:`RunObserver` (the run's), True (a display of this fold alone, which the trainer closes) or False."""
    if isinstance(progress, RunObserver):
        return progress, False
    if progress:
        return RunProgress(epochs, folds=1), True
    return None, False
