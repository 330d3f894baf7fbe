"""The ``milzoo`` command line.

User errors (bad recipe, unknown component, missing file, broken plugin,
unusable run directory) print one paragraph naming the problem and the fix,
and exit with code 2 -- never a traceback.  Plugins add commands through the
``milzoo_register_commands`` hook; the core commands' names are reserved, and
no plugin replaces another plugin's command (the second is refused, and its
plugin shown as failed in ``milzoo plugins``).  The plugins are loaded only when
a command is looked up, so ``milzoo --version`` loads none.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import sys

import click

from milzoo.errors import PluginConflictError, UserError


class MilzooGroup(click.Group):
    """A click group that turns :class:`UserError` into a clean message and exit code 2.

    Its commands are attached on first lookup (:func:`add_all_commands`), so ``--version`` loads no plugin, and
    it refuses to replace a command it already has (a plugin that tries it at import fails alone).
    """

    def add_command(self, cmd, name=None):
        name = name or cmd.name
        have = self.commands.get(name)
        if have is not None and have is not cmd:
            raise PluginConflictError(
                f"the command {name!r} already exists in milzoo and cannot be replaced; give the new command "
                "another name")
        super().add_command(cmd, name)

    def get_command(self, ctx, cmd_name):
        add_all_commands()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx):
        add_all_commands()
        return super().list_commands(ctx)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            if not getattr(exc, "milzoo_hint_shown", False):
                click.echo("interrupted; a run can be continued with `milzoo run RECIPE --out DIR --resume`.", err=True)
            ctx.exit(143 if _is_terminated(exc) else 130)
        except OSError as exc:  # a full disk is the user's to fix: one paragraph, exit 2 (`run` says more)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" while writing {exc.filename}" if exc.filename else ""
            click.echo(f"error: the disk is full ({exc.strerror or 'no space left on device'}){where}; free some space "
                       "(or write to another disk) and run the command again.", err=True)
            ctx.exit(2)


def _is_terminated(exc: BaseException) -> bool:
    from milzoo.runs.rundir import Terminated

    return isinstance(exc, Terminated)


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
@click.option("--log", "loggers", multiple=True, metavar="NAME",
              help="log to this experiment logger too (repeatable): csv, tensorboard, mlflow, wandb or a plugin's "
                   "(`milzoo list loggers`; options: [[log]] tables in the recipe)")
def run_cmd(recipe, out, overrides, resume, overwrite, fold, no_progress, jobs, loggers):
    """Train and evaluate RECIPE (a TOML file, or a shipped recipe's name: `milzoo recipes`) into a run directory."""
    from milzoo.train.distributed import maybe_distributed
    from milzoo.runs.runner import run

    with maybe_distributed() as dist, warnings_to_stderr():
        try:
            summary = run(recipe, out=out, overrides=list(overrides), resume=resume, overwrite=overwrite, fold=fold,
                          progress=False if no_progress else None, distributed=dist, jobs=jobs,
                          loggers=list(loggers))
        except KeyboardInterrupt as exc:
            if dist is None or dist.rank == 0:
                _resume_hint(exc, recipe, out, overrides)
            raise
        if dist is None or dist.rank == 0:
            click.echo(format_summary(summary))


def _resume_hint(exc: KeyboardInterrupt, recipe: str, out: str | None, overrides) -> None:
    """Say how the run ends and the exact command that continues it (its real recipe and folder)."""
    import shlex

    run_dir = getattr(exc, "run_dir", None) or out
    if run_dir is None:  # stopped before the recipe was read: nothing was written
        return
    from milzoo.runs.rundir import printable

    words = ["milzoo", "run", recipe, "--out", str(run_dir), "--resume"]
    if getattr(exc, "fold", None) is not None:
        words += ["--fold", str(exc.fold)]
    for item in overrides:
        words += ["--set", item]
    how = "terminated (SIGTERM)" if _is_terminated(exc) else "interrupted"
    click.echo(f"{how}; the checkpoints of finished epochs are kept in {printable(run_dir)}. Continue with: "
               f"{printable(shlex.join(words))}", err=True)
    exc.milzoo_hint_shown = True


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
    from milzoo.runs.rundir import printable

    if summary.get("complete") is False:
        return f"fold {summary['fold']} done; other folds are still missing in {printable(summary['run_dir'])}."
    lines = [f"{printable(summary['name'])} ({summary['protocol']}, {summary['num_folds']} fold(s))"
             + (f"; mean±SD over folds, {_std_words(summary)}" if (summary.get("num_folds") or 0) > 1 else "")]
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


def _std_words(summary: dict) -> str:
    """Which standard deviation the summary holds (its ``std_ddof``; an old ``summary.json`` has the population one)."""
    from milzoo.metrics import LEGACY_SUMMARY_DDOF, std_words

    return std_words(summary.get("std_ddof", LEGACY_SUMMARY_DDOF))


def _metric_text(name: str, m: dict) -> str | None:
    """``auc 0.912±0.041`` (``auc 0.912`` when the SD is undefined: one fold); an undefined AUC is said, never left
    out (an accuracy alone can mislead)."""
    mean, n, std = m.get("mean"), len(m.get("values") or []), m.get("std")
    if mean is None or mean != mean:
        return "auc undefined (no held-out split with both classes)" if name == "auc" else None
    text = f"{name} {mean:.3f}" + (f"±{std:.3f}" if isinstance(std, (int, float)) and std == std else "")
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
    names += [f"log={t.name}" for t in r.root.log]
    click.echo(f"ok: {recipe} ({', '.join(names)})")


@cli.command("list")
@click.argument("kind", required=False)
@click.option("--json", "as_json", is_flag=True)
def list_cmd(kind, as_json):
    """List registered components (encoder, pooling, loss, dataset, augment, task, logger, pretrained, download,
    converter)."""
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
CORE_COMMAND_MODULES = ("hub", "report", "recipes", "data", "convert")


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


class _PluginCli:
    """What a plugin's ``milzoo_register_commands(cli)`` receives: it collects commands, it adds none.

    ``add_command``, ``command`` and ``group`` work as on a click group; ``commands`` is a read-only view of the
    commands there are.  What the hook collected is checked and added only once the hook has returned.
    """

    def __init__(self, group: click.Group):
        self._group = group
        self.added: list[tuple[str, click.Command]] = []

    @property
    def commands(self):
        import types

        return types.MappingProxyType({**self._group.commands, **dict(self.added)})

    @property
    def name(self):
        return self._group.name

    def add_command(self, cmd, name=None):
        self.added.append((name or getattr(cmd, "name", None), cmd))

    def command(self, *args, **kwargs):
        def decorator(f):
            cmd = click.command(*args, **kwargs)(f)
            self.add_command(cmd)
            return cmd

        return decorator

    def group(self, *args, **kwargs):
        kwargs.setdefault("cls", click.Group)
        return self.command(*args, **kwargs)

    def get_command(self, ctx, name):
        return self.commands.get(name)


#: the names of the core commands: no plugin may add a command by one of these names
RESERVED_COMMANDS: frozenset[str] = frozenset()
_COMMAND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _refusal(name, cmd, owners: dict[str, str], plugin_key: str) -> str | None:
    """Why a plugin's command cannot be added, or ``None``."""
    from milzoo.registry import _manager as plugins

    if not isinstance(cmd, click.Command):
        return (f"its milzoo_register_commands added {cmd!r}, which is not a click command; pass a "
                "click.Command or click.Group to cli.add_command")
    if not isinstance(name, str) or not _COMMAND_NAME.fullmatch(name):
        return (f"its command name {name!r} is not valid (letters, digits and . _ -, no spaces or line breaks); "
                "rename the command")
    dist, version = plugins.plugin_distribution(plugin_key)
    if name in RESERVED_COMMANDS:
        return (f"its command {name!r} would replace milzoo's own `milzoo {name}`, and the core command names are "
                f"reserved ({', '.join(sorted(RESERVED_COMMANDS))}); {dist} {version} must rename its command")
    if name in owners:
        other = owners[name]
        other_dist, other_version = plugins.plugin_distribution(other)
        return (f"its command {name!r} is already added by the plugin {other} ({other_dist} {other_version}); a "
                f"plugin cannot replace another plugin's command, so {dist} {version}'s was refused. Rename one of "
                f"them, or disable one (MILZOO_DISABLE_PLUGINS={dist})")
    return None


def _add_plugin_commands() -> None:
    from milzoo.registry import _manager as plugins
    from milzoo.registry._providers import check_hook_result

    pm = plugins.get_plugin_manager()
    owners: dict[str, str] = {}  # command name -> the plugin that added it
    order = {rec.key: i for i, rec in enumerate(plugins.plugin_records())}
    impls = sorted(pm.hook.milzoo_register_commands.get_hookimpls(), key=lambda i: order.get(i.plugin_name, 1 << 30))
    for impl in impls:
        proxy = _PluginCli(cli)
        with plugins.isolated(impl.plugin_name, "in milzoo_register_commands") as outcome:
            check_hook_result("milzoo_register_commands", impl.function(cli=proxy))
            taken = dict(owners)
            for name, cmd in proxy.added:
                why = _refusal(name, cmd, taken, impl.plugin_name)
                if why is not None:
                    raise PluginConflictError(why)
                taken[name] = impl.plugin_name
        if outcome.failed:  # none of its commands: a refused hook adds nothing, like any failed hook
            continue
        for name, cmd in proxy.added:
            owners[name] = impl.plugin_name
            click.Group.add_command(cli, cmd, name)


_commands_added = False


def add_all_commands() -> None:
    """Attach the core command modules and the plugins' commands (once)."""
    global _commands_added, RESERVED_COMMANDS
    if not _commands_added:
        _commands_added = True
        _add_core_commands()
        RESERVED_COMMANDS = frozenset(cli.commands)
        _add_plugin_commands()


def main(argv: list[str] | None = None) -> int:
    import warnings

    # a plugin written against the old module paths works; its FutureWarning is for its author, and
    # `milzoo plugins` names it, instead of every command printing it
    warnings.filterwarnings("ignore", message=r".* moved to milzoo", category=FutureWarning)
    # the commands (and with them the plugins) are attached when click looks one up: `--version` loads none
    previous = _catch_sigterm()
    try:
        cli.main(args=argv, prog_name="milzoo", standalone_mode=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        click.echo(str(exc.code), err=True)  # sys.exit("message"), as Python itself does it
        return 1
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)
    return 0


def _catch_sigterm():
    """SIGTERM (Slurm, Kubernetes, ``kill``) ends a command like Ctrl-C: a run keeps its checkpoints, records
    "terminated" and says how to resume; the exit code is 143.  Returns the handler it replaced (None when
    signals cannot be caught here: not the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        from milzoo.runs.rundir import Terminated

        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminate)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
