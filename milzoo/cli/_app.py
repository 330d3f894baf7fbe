"""The ``milzoo`` command line.

User errors (bad recipe, unknown component, missing file, broken plugin,
unusable run directory) print one paragraph naming the problem and the fix,
and exit with code 2 -- never a traceback.  Plugins add commands through the
``milzoo_register_commands`` hook.
"""

from __future__ import annotations

import contextlib
import json
import sys

import click

from milzoo.errors import UserError


class MilzooGroup(click.Group):
    """A click group that turns :class:`UserError` into a clean message and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; a run can be continued with `milzoo run RECIPE --out DIR --resume`.", err=True)
            ctx.exit(130)


@click.group(cls=MilzooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="milzoo")
def cli():
    """milzoo: a plugin-based zoo of deep multiple-instance-learning models."""


@cli.command("run")
@click.argument("recipe")
@click.option("--out", "out", default=None, help="run directory (default runs/<recipe name>)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a recipe value (repeatable)")
@click.option("--resume", is_flag=True, help="continue an interrupted run from its last checkpoint")
@click.option("--overwrite", is_flag=True, help="replace an existing run directory")
@click.option("--fold", type=int, default=None, help="run only this fold (for independent per-fold jobs)")
@click.option("--no-progress", is_flag=True, help="hide the progress bar")
@click.option("--jobs", "-j", type=int, default=1, show_default=True,
              help="train the folds in N worker processes (train.threads threads each, default 1)")
def run_cmd(recipe, out, overrides, resume, overwrite, fold, no_progress, jobs):
    """Train and evaluate RECIPE (a TOML file, or a shipped recipe's name: `milzoo recipes`) into a run directory."""
    from milzoo.train.distributed import maybe_distributed
    from milzoo.runs.runner import run

    with maybe_distributed() as dist, warnings_to_stderr():
        summary = run(recipe, out=out, overrides=list(overrides), resume=resume, overwrite=overwrite, fold=fold,
                      progress=False if no_progress else None, distributed=dist, jobs=jobs)
        if dist is None or dist.rank == 0:
            click.echo(format_summary(summary))


@contextlib.contextmanager
def warnings_to_stderr():
    """Show the ``milzoo`` logger's warnings (e.g. folds that cannot hold both classes) as ``warning: ...``."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logger = logging.getLogger("milzoo")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


#: the metrics the summary shows, of every task (docs/tasks.md), bag level then patient level
SUMMARY_METRICS = ("acc", "auc", "f1", "inst_acc", "r2", "rmse", "mae", "pearson", "c_index", "c_index_uno",
                   "td_auc", "ibs")
SUMMARY_METRICS = SUMMARY_METRICS + tuple(f"patient_{m}" for m in ("acc", "auc", "r2", "rmse", "c_index"))


def format_summary(summary: dict) -> str:
    if summary.get("complete") is False:
        return f"fold {summary['fold']} done; other folds are still missing in {summary['run_dir']}."
    lines = [f"{summary['name']} ({summary['protocol']}, {summary['num_folds']} fold(s))"]
    for section, label in (("last", "last epoch"), ("selected", "validation-selected"),
                           ("best_epoch_on_test", "best epoch on test (optimistic)")):
        block = summary.get(section)
        if not block:
            continue
        if section == "best_epoch_on_test":
            block = {"test": {k: v for k, v in block.items() if isinstance(v, dict)}}
        for split, metrics in block.items():
            if split == "val" or not isinstance(metrics, dict):
                continue
            shown = "  ".join(filter(None, (_metric_text(k, metrics[k]) for k in SUMMARY_METRICS
                                             if isinstance(metrics.get(k), dict))))
            lines.append(f"  {label:<32} {split:<16} {shown}")
    for split, m in (summary.get("ensemble") or {}).items():
        auc = "auc undefined (one class)" if m.get("auc") is None or m["auc"] != m["auc"] else f"auc {m['auc']:.3f}"
        lines.append(f"  {'ensemble (vote)':<32} {split:<16} acc {m['acc']:.3f}  {auc}  f1 {m['f1']:.3f}")
    from milzoo.model.decision import summary_has_classes, summary_rule_text

    if summary_has_classes(summary):
        lines.append(f"  decision rule (acc, f1): {summary_rule_text(summary)}"
                     + ("; the ensemble votes the folds' classes" if summary.get("ensemble") else ""))
    return "\n".join(lines)


def _metric_text(name: str, m: dict) -> str | None:
    """``auc 0.912±0.041``; an undefined AUC is said, never left out (an accuracy alone can mislead)."""
    mean, n = m.get("mean"), len(m.get("values") or [])
    if mean is None or mean != mean:
        return "auc undefined (no held-out split with both classes)" if name == "auc" else None
    text = f"{name} {mean:.3f}±{m['std']:.3f}"
    if m.get("undefined_in"):
        text += f" (undefined in {m['undefined_in']} of {n} folds, which hold one class)"
    return text


@cli.command("validate")
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--print", "show", is_flag=True, help="print the resolved recipe")
def validate_cmd(recipe, overrides, show):
    """Check RECIPE (a file or a shipped recipe's name) without running it; report every problem at once."""
    from milzoo.recipe._validate import load_recipe

    r = load_recipe(recipe, list(overrides))
    if show:
        click.echo(r.to_toml())
    names = [f"{k}={getattr(r.root, k).name}" for k in ("data", "encoder", "pooling", "augment") if getattr(r.root, k)]
    names += [f"loss={t.name}" for t in r.root.loss]
    click.echo(f"ok: {recipe} ({', '.join(names)})")


@cli.command("list")
@click.argument("kind", required=False)
@click.option("--json", "as_json", is_flag=True)
def list_cmd(kind, as_json):
    """List registered components (encoder, pooling, loss, dataset, augment, pretrained)."""
    from milzoo.registry import _table as registry

    if kind is not None and kind.endswith("s") and kind[:-1] in registry.ALL_KINDS:
        kind = kind[:-1]
    items = registry.list_components(kind)
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    from milzoo.cli.listing import format_components

    click.echo(format_components(items))


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True)
def plugins_cmd(as_json):
    """Show every plugin: name, distribution, version, status and error, and every contested component name."""
    from milzoo.registry import _manager as plugins
    from milzoo.registry import _table as registry

    registry.list_components()  # run the hooks so registration failures are recorded too
    from milzoo.recipe import book as recipebook

    recipebook.list_recipes()  # and the recipe hooks (milzoo.recipebook)
    recs = [r.to_dict() for r in plugins.plugin_records()]
    if as_json:
        click.echo(json.dumps(recs, indent=2))
        return
    from milzoo.cli.listing import format_plugins

    click.echo(format_plugins(recs))


@cli.command("summarize")
@click.argument("run_dir")
def summarize_cmd(run_dir):
    """Assemble summary.json of RUN_DIR once all its folds are present."""
    from milzoo.runs.summary import summarize

    click.echo(format_summary(summarize(run_dir)))


#: core command modules in milzoo/cli/, each exposing add_commands(cli)
CORE_COMMAND_MODULES = ("hub", "report", "recipes")


def _add_core_commands() -> None:
    import importlib

    for name in CORE_COMMAND_MODULES:
        try:
            module = importlib.import_module(f"milzoo.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"milzoo.cli.{name}":
                continue
            raise
        module.add_commands(cli)


def _add_plugin_commands() -> None:
    from milzoo.registry import _manager as plugins

    pm = plugins.get_plugin_manager()
    for impl in pm.hook.milzoo_register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            plugins.record_failure(impl.plugin_name, exc)


_commands_added = False


def add_all_commands() -> None:
    """Attach the core command modules and the plugins' commands (once)."""
    global _commands_added
    if not _commands_added:
        _commands_added = True
        _add_core_commands()
        _add_plugin_commands()


def main(argv: list[str] | None = None) -> int:
    import warnings

    # a plugin written against the old module paths works; its FutureWarning is for its author, and
    # `milzoo plugins` names it, instead of every command printing it
    warnings.filterwarnings("ignore", message=r".* moved to milzoo", category=FutureWarning)
    add_all_commands()
    try:
        cli.main(args=argv, prog_name="milzoo", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
