"""Progress output: a bar on a terminal, one line per epoch in a log file."""

from __future__ import annotations

import io
import re

from milzoo.train.progress import EpochProgress
from milzoo.runs.runner import run


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_one_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path, recipe_factory, capsys):
    run(recipe_factory(train={"epochs": 3, "progress": True}), out=tmp_path / "run")
    err = capsys.readouterr().err
    assert "\r" not in err  # no bar redraws piling up in a log file
    lines = [l for l in err.splitlines() if l.startswith("fold ")]
    assert len(lines) == 2 * 3, err
    assert re.fullmatch(r"fold 1 epoch 3/3  loss \d\.\d{3}  acc \d\.\d{3}  auc \d\.\d{3}  \(\d+\.\ds\)", lines[-1])


def test_a_terminal_gets_a_bar_and_a_resumed_fold_counts_on():
    tty = Terminal()
    bar = EpochProgress(total=4, initial=1, desc="fold 0", stream=tty)
    bar.update({"loss": "0.500"})
    bar.close()
    assert "\r" in tty.getvalue() and "fold 0:" in tty.getvalue()  # tqdm redraws in place
    log = io.StringIO()
    plain = EpochProgress(total=4, initial=1, desc="fold 0", stream=log)  # resumed after epoch 1 of 4
    plain.update({"loss": "0.500"})
    plain.update({"loss": "0.400"})
    plain.close()
    assert [l.split("  ")[0] for l in log.getvalue().splitlines()] == ["fold 0 epoch 2/4", "fold 0 epoch 3/4"]
