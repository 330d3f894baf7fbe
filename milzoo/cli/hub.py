"""``milzoo push``, ``export``, ``pull`` and ``verify``: sharing trained models on the Hub, and checking them."""

from __future__ import annotations

import click

_FOLD_HELP = ("fold(s) to share (repeatable). Default: fold 0 for holdout runs, every fold as one ensemble for "
              "cv and cv_ensemble runs; one --fold gives a single model")
_CKPT_HELP = "which checkpoint of each fold: auto (best/ when the fold has one, else last/), best or last"


def _card_options(f):
    f = click.option("--tag", "tags", multiple=True, help="extra model-card tag (repeatable)")(f)
    f = click.option("--license", "license_", default=None, help="licence id for the model card, e.g. apache-2.0")(f)
    f = click.option("--checkpoint", type=click.Choice(["auto", "best", "last"]), default="auto", show_default=True,
                     help=_CKPT_HELP)(f)
    f = click.option("--fold", "folds", type=int, multiple=True, help=_FOLD_HELP)(f)
    return f


@click.command("push")
@click.argument("run_dir")
@click.argument("repo_id")
@click.option("--revision", default=None, help="branch to commit to (created from main when missing; default main)")
@click.option("--private", is_flag=True, help="create the repository as private (when it does not exist yet)")
@click.option("--create-pr", is_flag=True, help="open a pull request instead of committing directly")
@click.option("--commit-message", default=None, help="commit message (default: 'Upload RUN with milzoo X')")
@_card_options
def push_cmd(run_dir, repo_id, revision, private, create_pr, commit_message, folds, checkpoint, license_, tags):
    """Upload the model trained in RUN_DIR (or a Hub folder) to the Hub repository REPO_ID (org/name).

    Log in first (`hf auth login`, or set HF_TOKEN). The folder uploaded is
    exactly what `milzoo export` writes.
    """
    from milzoo.hub._client import push_to_hub

    info = push_to_hub(run_dir, repo_id, revision=revision, private=private, create_pr=create_pr,
                       commit_message=commit_message, folds=list(folds) or None, checkpoint=checkpoint,
                       license=license_, tags=tags)
    oid = getattr(info, "oid", None)
    url = getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or ""
    click.echo(f"pushed {run_dir} to {repo_id}" + (f" (commit {oid})" if oid else "") + (f": {url}" if url else ""))
    if oid:
        click.echo(f"load it with: milzoo.load_pretrained('hf-hub:{repo_id}@{oid}')")
        click.echo(f"pin it in a pretrained entry with revision=\"{oid}\", published=True")


@click.command("export")
@click.argument("run_dir")
@click.argument("out_dir")
@click.option("--repo-id", default=None, help="the repository id the model card should show (org/name)")
@click.option("--overwrite", is_flag=True, help="replace OUT_DIR when it is an earlier export")
@_card_options
def export_cmd(run_dir, out_dir, repo_id, overwrite, folds, checkpoint, license_, tags):
    """Write the Hub folder of the model trained in RUN_DIR into OUT_DIR (what `milzoo push` uploads)."""
    from milzoo.hub._client import save_pretrained

    out = save_pretrained(run_dir, out_dir, folds=list(folds) or None, checkpoint=checkpoint, repo_id=repo_id,
                          license=license_, tags=tags, overwrite=overwrite)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    click.echo(f"wrote {out}: {', '.join(files)}")


@click.command("pull")
@click.argument("ref")
@click.option("--revision", default=None, help="branch, tag or commit (default: the entry's pinned revision, or main)")
@click.option("--cache-dir", default=None, help="Hub cache folder (default HF_HUB_CACHE)")
def pull_cmd(ref, revision, cache_dir):
    """Download REF (a zoo name, or a Hub repository org/name[@rev] or hf-hub:org/name[@rev]) into the Hub cache
    for offline use, and check it loads."""
    from milzoo.hub._client import fetch, load_folder

    folder = fetch(ref, revision=revision, cache_dir=cache_dir)
    model = load_folder(folder)
    kind = type(model).__name__
    click.echo(f"{ref}: cached at {folder} ({kind}, classes: {', '.join(model.class_names)})")


@click.command("verify")
@click.argument("ref")
def verify_cmd(ref):
    """Measure REF (a zoo name, a Hub folder, or org/name[@rev] or hf-hub:org/name[@rev] on the Hub) again on the
    held-out data its recipe defines, and compare every metric with the one its model card records (exit 1 if any
    differs)."""
    from milzoo.hub.verify import verify

    result = verify(ref)
    for line in result.lines():
        click.echo(line)
    if not result.ok:
        click.echo("some metrics differ from the recorded ones (fp32 results may differ between CPU types; "
                   "docs/hub.md, 'Checked, not trusted').", err=True)
        raise SystemExit(1)


COMMANDS = (push_cmd, export_cmd, pull_cmd, verify_cmd)


def add_commands(cli: click.Group) -> None:
    """Add ``push``, ``export`` and ``pull`` to the ``milzoo`` command group (idempotent)."""
    for cmd in COMMANDS:
        if cmd.name not in cli.commands:
            cli.add_command(cmd)
