"""Progress of a run (docs/cli.md): the fold out of how many, the epochs, a run ETA and a final table; one line per
epoch naming the split of every figure in a log file (validation preferred); epochs numbered from 0 everywhere."""

from __future__ import annotations

import io
import json
import re

from milzoo.runs.runner import run
from milzoo.train import progress as progress_module
from milzoo.train.progress import EpochProgress, RunProgress

_FIGURE = r"\d+\.\d{3}"
_LINE = re.compile(rf"fold (\d+) \[(\d+)/(\d+)\]  epoch (\d+) \[(\d+)/(\d+)\]  train loss {_FIGURE}  "
                   rf"(\w+) loss {_FIGURE}  \7 acc {_FIGURE}  \7 auc {_FIGURE}  \(\d+\.\ds, run ETA \d+:\d\d:\d\d\)")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _epochs(run_dir) -> list[tuple[int, int]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["fold"], r["epoch"]) for r in map(json.loads, lines) if r["split"] == "train"]


def test_log_form_counts_folds_and_epochs_names_splits_and_ends_with_a_table(tmp_path, recipe_factory, capsys):
    run(recipe_factory(train={"epochs": 3, "progress": True}), out=tmp_path / "run")
    err = capsys.readouterr().err
    assert "\r" not in err  # no bar redraws piling up in a log file
    found = [_LINE.fullmatch(line) for line in err.splitlines() if line.startswith("fold ") and " epoch " in line]
    assert len(found) == 2 * 3 and all(found), err
    # the fold out of how many, the epoch numbered as in metrics.jsonl and counted out of how many
    assert [(int(m[1]), int(m[2]), int(m[3])) for m in found] == [(0, 1, 2)] * 3 + [(1, 2, 2)] * 3
    assert [(int(m[1]), int(m[4])) for m in found] == _epochs(tmp_path / "run")
    assert [(int(m[5]), int(m[6])) for m in found] == [(1, 3), (2, 3), (3, 3)] * 2
    assert {m[7] for m in found} == {"test"}  # no validation split here: the figures are test's, and say so
    table = err[err.index("fold  epochs"):].splitlines()
    assert table[0].split() == ["fold", "epochs", "time", "train", "loss", "test", "loss", "test", "acc", "test",
                                "auc"]
    assert [row.split()[:2] for row in table[1:3]] == [["0", "3"], ["1", "3"]]
    logged = (tmp_path / "run" / "log.txt").read_text()
    assert all(m[0] in logged for m in found)  # the same lines in the run's log


def test_validation_is_shown_where_it_exists_and_log_txt_gets_lines_without_a_display(tmp_path, recipe_factory,
                                                                                      capsys):
    run(recipe_factory(protocol={"val_fraction": 0.25}), out=tmp_path / "run")  # train.progress = false
    assert "epoch" not in capsys.readouterr().err
    lines = [line.split(" INFO ", 1)[1] for line in (tmp_path / "run" / "log.txt").read_text().splitlines()
             if " epoch " in line and "[" in line]
    found = [_LINE.fullmatch(line) for line in lines]
    assert len(found) == 6 and all(found), lines
    assert {m[7] for m in found} == {"val"} and not any("test" in line for line in lines)


def test_jobs_show_every_fold_of_the_workers(tmp_path, recipe_factory, capsys):
    run(recipe_factory(train={"epochs": 2, "progress": True}, protocol={"folds": 3}), out=tmp_path / "run", jobs=2)
    err = capsys.readouterr().err
    found = [_LINE.fullmatch(line) for line in err.splitlines() if line.startswith("fold ") and " epoch " in line]
    assert all(found) and sorted((int(m[1]), int(m[4])) for m in found) == sorted(_epochs(tmp_path / "run"))


def _records(fold: int, epoch: int, acc: float) -> list[dict]:
    return [{"fold": fold, "epoch": epoch, "split": "train", "lr": 0.1, "time_s": 0.5, "loss": 0.5},
            {"fold": fold, "epoch": epoch, "split": "test", "acc": 0.1, "loss": 0.9},
            {"fold": fold, "epoch": epoch, "split": "val", "acc": acc, "auc": None, "loss": 0.7}]


def test_a_terminal_gets_a_run_bar_with_its_eta_fold_bars_and_a_table():
    tty = Terminal()
    bar = RunProgress(epochs=4, folds=2, num_folds=5, stream=tty)
    bar.fold_started(3, 0, 4)
    bar.epoch_done(3, 0, _records(3, 0, 0.25))
    bar.epoch_done(3, 1, _records(3, 1, 0.75))
    shown = tty.getvalue()
    assert "\r" in shown  # bars redraw in place
    assert "run: fold 3 [4/5]" in shown and "2/8 epochs" in shown and "run ETA" in shown
    assert "fold 3 [4/5] epoch 1" in shown and "val acc 0.750" in shown and "val auc nan" in shown
    assert "test acc" not in shown  # validation preferred over test
    bar.fold_done(3, {"epochs_run": 2, "stopped_early": True})
    bar.close()
    table = tty.getvalue().rsplit("\r", 1)[-1].strip().splitlines()[-2:]
    assert table[0].split()[:3] == ["fold", "epochs", "time"] and table[1].startswith("3     2 (early stop)")


def test_the_run_eta_counts_folds_times_epochs_less_resumed_and_skipped_epochs(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    bar = RunProgress(epochs=10, folds=3, num_folds=3, stream=io.StringIO())
    assert bar.total == 30
    bar.fold_started(0, 4, 10)  # resumed after epoch 3: six epochs left in this fold
    assert bar.total == 26
    for epoch in (4, 5):
        now[0] += 2.0
        bar.epoch_done(0, epoch, _records(0, epoch, 0.5))
    assert bar.eta() == 2.0 * (26 - 2)  # two seconds an epoch, 24 epochs to go
    bar.fold_done(0, {"epochs_run": 6, "stopped_early": True})  # early stopping skipped epochs 6..9
    assert bar.total == 22 and bar.eta() == 2.0 * 20


def test_a_fold_alone_counts_epochs_from_zero_and_a_resumed_fold_counts_on():
    tty = Terminal()
    bar = EpochProgress(total=4, initial=1, desc="fold 0", stream=tty)
    bar.update({"loss": "0.500"})
    bar.close()
    assert "\r" in tty.getvalue() and "fold 0 epoch 1" in tty.getvalue()  # tqdm redraws in place
    log = io.StringIO()
    plain = EpochProgress(total=4, initial=1, desc="fold 0", stream=log)  # resumed after epoch 0 of 4
    plain.update({"loss": "0.500"})
    plain.update({"loss": "0.400"})
    plain.close()
    assert [l.split("  ")[:2] for l in log.getvalue().splitlines()] == [["fold 0", "epoch 1 [2/4]"],
                                                                        ["fold 0", "epoch 2 [3/4]"]]
