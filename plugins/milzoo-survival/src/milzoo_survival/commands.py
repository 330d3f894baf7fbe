"""``milzoo survival km``: the Kaplan-Meier report of a survival run's fold."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("survival")
def survival_group():
    """Survival runs (milzoo-survival): Kaplan-Meier reports."""


@survival_group.command("km")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--fold", type=click.IntRange(min=0), default=0, show_default=True, help="the fold to report")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="whose predictions: the validation-selected or the last epoch's")
@click.option("--quantile", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.5,
              show_default=True, help="the cut-off: this quantile of the VALIDATION bags' risk")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the PNG to write (default: RUN_DIR/fold-XX/<checkpoint>/km-test.png)")
def km_cmd(run_dir: Path, fold: int, checkpoint: str, quantile: float, out: Path | None):
    """Kaplan-Meier curves of the test bags of RUN_DIR's fold, split into low and high risk at a cut-off chosen
    on the fold's VALIDATION bags (never on test), with the log-rank p-value.

    Reads fold-XX/{best,last}/predictions-{val,test}.csv (columns bag_id, time, event, risk, ...).
    """
    from milzoo_survival.km import km_report_for_run

    report, val_path, test_path = km_report_for_run(run_dir, fold, checkpoint, quantile=quantile)
    out = out or val_path.parent / "km-test.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(report.png)
    click.echo(f"cut-off chosen on: validation ({val_path})")
    click.echo(f"groups compared on: test ({test_path})")
    click.echo(report.summary())
    click.echo(f"p_value = {report.p_value:.6g}")
    click.echo(f"wrote {out}")


def add_commands(cli) -> None:
    cli.add_command(survival_group)
