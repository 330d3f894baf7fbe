"""A plugin cannot take over milzoo (hardening, round 3).

Fake distributions (``*.dist-info`` with ``METADATA`` and ``entry_points.txt``, plus one module) are put on
``sys.path`` as in tests/test_plugin_discovery.py; nothing is pip-installed.  What needs a fresh ``milzoo``
command line (the commands are attached once per process) runs ``python -m milzoo`` in a subprocess with the
fake distributions on ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from milzoo import registry
from milzoo.errors import AmbiguousComponentError

VERSION = "0.1"


def _write_fake_dist(root: Path, ep_name: str, dist: str, module: str, source: str) -> None:
    info = root / f"{dist.replace('-', '_')}-{VERSION}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {VERSION}\n")
    (info / "entry_points.txt").write_text(f"[milzoo]\n{ep_name} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install({"ep": source, ...})``: one fake distribution ``milzoo-fake-<ep>`` per entry point."""
    for var in ("MILZOO_LOAD_PLUGINS", "MILZOO_DISABLE_PLUGINS", "MILZOO_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "site"
    modules: list[str] = []

    def _install(plugins: dict[str, str]) -> Path:
        for ep, source in plugins.items():
            module = f"milzoo_iso_{ep}"
            _write_fake_dist(root, ep, f"milzoo-fake-{ep.replace('_', '-')}", module, source)
            modules.append(module)
        if str(root) not in sys.path:
            monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        registry.reset_plugins()
        return root

    yield _install
    for module in modules:
        sys.modules.pop(module, None)
    registry.reset_plugins()


def _record(name: str) -> registry.PluginRecord:
    found = [r for r in registry.plugin_records() if r.name == name]
    assert len(found) == 1, [r.name for r in registry.plugin_records()]
    return found[0]


def _milzoo(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILZOO_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "milzoo", *args], capture_output=True, text=True, env=env,
                          cwd=root, timeout=timeout)


def _hook(body: str, hook: str = "milzoo_register_poolings", arg: str = "register") -> str:
    return ("from milzoo import hookimpl\n\n\n@hookimpl\n"
            f"def {hook}({arg}):\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n")


def _pooling(name_line: str, register: str = "register(P)") -> str:
    return _hook(f"""
        from milzoo.builtin.poolings import MeanPooling

        class P(MeanPooling):
            '''A fake pooling.'''

            {name_line}

        {register}
    """)


GOOD = _pooling('name = "iso_good"')


# --------------------------------------------------------------------------- 1. BaseException from a plugin


def test_hooks_raising_base_exceptions_fail_only_their_plugin(install):
    install({
        "exit0": _hook("raise SystemExit(0)"),
        "genexit": _hook("raise GeneratorExit('stop')"),
        "custom": _hook("class Boom(BaseException):\n    pass\nraise Boom('custom base exception')"),
        "good": GOOD,
    })
    assert "iso_good" in registry.names("pooling")  # the Python API carries on
    assert {"exit0", "genexit", "custom"} <= {r.name for r in registry.failed_plugins()}
    assert "SystemExit(0)" in _record("exit0").error and "must not exit" in _record("exit0").error
    assert "GeneratorExit" in _record("genexit").error
    assert "Boom" in _record("custom").error and "custom base exception" in _record("custom").error
    assert _record("good").status == "ok"


def test_a_real_ctrl_c_in_a_hook_still_stops(install):
    install({"ctrlc": _hook("raise KeyboardInterrupt")})
    with pytest.raises(KeyboardInterrupt):
        registry.list_components()


def test_a_plugin_that_exits_at_import_is_shown_failed_by_every_command(install):
    root = install({
        "sysexit": "import sys\nsys.exit(0)\n",
        "argp": "import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument('--x')\n"
                "parser.parse_args()\n",
        "good": GOOD,
    })
    proc = _milzoo(root, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    recs = {r["name"]: r for r in json.loads(proc.stdout)}
    assert recs["sysexit"]["status"] == "failed" and "SystemExit(0)" in recs["sysexit"]["error"]
    assert recs["argp"]["status"] == "failed" and "SystemExit(2)" in recs["argp"]["error"]
    assert "unrecognized arguments" in recs["argp"]["error"]  # what argparse printed, quoted
    assert recs["good"]["status"] == "ok"

    proc = _milzoo(root, "--version")
    assert proc.returncode == 0 and "version" in proc.stdout, proc.stderr
    proc = _milzoo(root, "list", "pooling")
    assert proc.returncode == 0 and "iso_good" in proc.stdout, proc.stderr
    proc = _milzoo(root, "plugins")
    assert proc.returncode == 0 and "sysexit" in proc.stdout and "failed" in proc.stdout, proc.stderr


# --------------------------------------------------------------------------- 2. commands


_FAKE_COMMANDS = _hook("""
    import click

    @click.command("plugins")
    def fake_plugins():
        click.echo("HIJACKED plugins")

    @click.command("run")
    def fake_run():
        click.echo("HIJACKED run")

    cli.add_command(fake_plugins)
    cli.add_command(fake_run)
""", hook="milzoo_register_commands", arg="cli")

_IMPORT_TIME_HIJACK = """
import click
from milzoo.cli import cli

@click.command("summarize")
def fake_summarize():
    click.echo("HIJACKED summarize")

cli.add_command(fake_summarize)
"""


def _hello(text: str) -> str:
    return _hook(f"""
        import click

        @cli.command("hello")
        def hello():
            click.echo({text!r})
    """, hook="milzoo_register_commands", arg="cli")


def test_core_commands_are_reserved(install):
    root = install({"hijack": _FAKE_COMMANDS, "hijack_at_import": _IMPORT_TIME_HIJACK, "good": GOOD})
    proc = _milzoo(root, "plugins", "--json")
    assert proc.returncode == 0 and "HIJACKED" not in proc.stdout, proc.stdout + proc.stderr
    recs = {r["name"]: r for r in json.loads(proc.stdout)}
    hijack = recs["hijack"]
    assert hijack["status"] == "failed", hijack
    assert "'plugins'" in hijack["error"] and "reserved" in hijack["error"]
    assert "milzoo-fake-hijack" in hijack["error"]  # names its distribution
    assert recs["hijack_at_import"]["status"] == "failed"
    assert "'summarize'" in recs["hijack_at_import"]["error"]
    for args in (["run", "--help"], ["summarize", "--help"]):
        proc = _milzoo(root, *args)
        assert proc.returncode == 0 and "HIJACKED" not in proc.stdout, proc.stdout


def test_a_plugin_cannot_replace_another_plugins_command(install):
    root = install({"hello_a": _hello("from a"), "hello_b": _hello("from b")})
    proc = _milzoo(root, "hello")
    assert proc.returncode == 0 and proc.stdout.strip() == "from a", proc.stdout + proc.stderr
    recs = {r["name"]: r for r in json.loads(_milzoo(root, "plugins", "--json").stdout)}
    assert recs["hello_a"]["status"] == "ok"
    second = recs["hello_b"]
    assert second["status"] == "failed"
    assert "milzoo-fake-hello-a" in second["error"] and "milzoo-fake-hello-b" in second["error"]


# --------------------------------------------------------------------------- 3. slow plugins


def test_version_loads_no_plugin(install, tmp_path):
    marker = tmp_path / "imported"
    root = install({"marker": f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n"})
    proc = _milzoo(root, "--version")
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "milzoo --version imported a plugin"
    assert _milzoo(root, "plugins").returncode == 0 and marker.exists()  # other commands do load it


def test_a_slow_plugin_is_timed_and_named(install, caplog):
    from milzoo.cli.listing import format_plugins

    install({"slow": "import time\ntime.sleep(1.1)\n", "good": GOOD})
    with caplog.at_level(logging.WARNING, logger="milzoo"):
        recs = registry.plugin_records()
    slow = _record("slow")
    assert slow.status == "ok" and slow.import_s >= 1.1
    assert _record("good").import_s < 1.0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("milzoo-fake-slow" in m and "1.1 s" in m for m in warned), warned
    text = format_plugins([r.to_dict() for r in recs])
    assert text.splitlines()[0].split()[:6] == ["name", "distribution", "version", "status", "import", "error"]
    assert "1.1 s" in next(l for l in text.splitlines() if l.startswith("slow "))
    assert "MILZOO_DISABLE_PLUGINS=milzoo-fake-slow" in text


# --------------------------------------------------------------------------- 4. names: whitespace and case


@pytest.mark.parametrize("bad", ["iso_nl\n", "iso\ttab", "iso_trailing ", " iso_leading"])
def test_names_with_whitespace_are_refused(install, bad):
    install({"ws": _pooling(f"name = {bad!r}"), "wsalias": _pooling('name = "iso_alias_ok"',
                                                                   f"register(P, aliases=[{bad!r}])")})
    names = registry.names("pooling")
    assert bad not in names and bad.strip() not in names and "iso_alias_ok" not in names
    assert "not a valid registry name" in _record("ws").error
    assert "invalid alias" in _record("wsalias").error
    assert registry.NAME_PATTERN.fullmatch(bad) is None


def test_names_equal_ignoring_case_are_a_conflict(install):
    from milzoo.builtin.poolings import MeanPooling

    install({"upper": _pooling('name = "MEAN"')})
    for bare in ("mean", "MEAN"):
        with pytest.raises(AmbiguousComponentError) as info:
            registry.get_component("pooling", bare)
        msg = str(info.value)
        assert '"milzoo:mean"' in msg and '"milzoo-fake-upper:MEAN"' in msg and "differ only in case" in msg
    assert registry.get_component("pooling", "milzoo:mean") is MeanPooling
    assert registry.get_component("pooling", "milzoo-fake-upper:MEAN").provenance["distribution"] == \
        "milzoo-fake-upper"
    contested = [(kind, sorted(e.distribution for e in found)) for kind, name, found in registry.conflicts()]
    assert ("pooling", ["milzoo", "milzoo-fake-upper"]) in contested
    assert _record("upper").status == "ok" and _record("upper").conflicts == ["pooling:MEAN"]


def test_one_distribution_registering_two_case_variants_fails(install):
    install({"twice": _hook("""
        from milzoo.builtin.poolings import MaxPooling, MeanPooling

        class A(MeanPooling):
            '''First.'''
            name = "iso_twice"

        class B(MaxPooling):
            '''Second.'''
            name = "ISO_Twice"

        register(A)
        register(B)
    """)})
    registry.list_components()
    rec = _record("twice")
    assert rec.status == "failed" and "differ only in case" in rec.error
    assert not registry.conflicts()


# --------------------------------------------------------------------------- 5. junk registrations


def test_aliases_given_as_a_string_are_refused(install):
    install({"strali": _pooling('name = "iso_strali"', 'register(P, aliases="xyz")')})
    assert not {"x", "y", "z", "iso_strali"} & set(registry.COMPONENTS.keys("pooling"))
    err = _record("strali").error
    assert "aliases='xyz'" in err and "aliases=['xyz']" in err


def test_a_generator_hook_fails_instead_of_registering_nothing(install):
    install({"gen": _hook("""
        from milzoo.builtin.poolings import MeanPooling

        class P(MeanPooling):
            '''Never registered.'''
            name = "iso_gen"

        yield register(P)
    """), "agen": "from milzoo import hookimpl\n\n\n@hookimpl\nasync def milzoo_register_losses(register):\n"
                  "    pass\n"})
    assert "iso_gen" not in registry.names("pooling")
    rec = _record("gen")
    assert rec.status == "failed" and "generator function" in rec.error and "register(" in rec.error
    assert _record("agen").status == "failed" and "async function" in _record("agen").error


def test_a_hook_that_returns_its_classes_instead_of_registering_them_fails(install):
    install({"ret": _hook("""
        from milzoo.builtin.poolings import MeanPooling

        class P(MeanPooling):
            name = "iso_ret"

        return [P]
    """), "listcomp": _pooling('name = "iso_listcomp"', "[register(c) for c in (P,)]"),
        "cmdret": _hook("import click\n\nreturn [click.Command('iso-cmd')]", "milzoo_register_commands", "cli")})
    assert "iso_ret" not in registry.names("pooling")
    rec = _record("ret")
    assert rec.status == "failed" and "milzoo_register_poolings hook returned [<class" in rec.error
    assert "instead of calling register(...)" in rec.error
    assert _record("listcomp").status == "ok" and "iso_listcomp" in registry.names("pooling")  # a list of None
    from milzoo.cli._app import _add_plugin_commands

    _add_plugin_commands()
    rec = _record("cmdret")
    assert rec.status == "failed" and "instead of calling cli.add_command(...)" in rec.error


def test_a_download_must_be_a_download(install):
    install({"baddl": _hook("register({'name': 'iso_dl', 'fetch': print})", "milzoo_register_downloads")})
    assert "iso_dl" not in registry.names("download")
    rec = _record("baddl")
    assert rec.status == "failed" and "download 'iso_dl' is a dict, not a milzoo.components.Download" in rec.error


def test_a_name_that_is_not_a_string_says_so(install):
    install({"intname": _pooling('name = "iso_x"', "register(P, name=123)")})
    err = _record("intname").error if registry.list_components() is not None else ""
    assert "must be a string" in err and "123 (int)" in err
    assert "without a name" not in err


# --------------------------------------------------------------------------- 6. provenance before the registry


def test_provenance_before_the_registry_is_built(install):
    install({"prov": """
        from milzoo import hookimpl
        from milzoo.builtin.poolings import MeanPooling


        class ProvPool(MeanPooling):
            '''A class a user imports straight from the plugin.'''

            name = "iso_prov"


        @hookimpl
        def milzoo_register_poolings(register):
            register(ProvPool)
    """})
    cls = importlib.import_module("milzoo_iso_prov").ProvPool
    # the attribute builds the registry when asked (docs/plugins.md, "Provenance"): never the parent's, never a
    # stale {} because nothing looked a name up yet
    expected = {"plugin": "prov", "distribution": "milzoo-fake-prov", "version": VERSION}
    assert cls.provenance == expected
    assert registry.provenance_of(cls) == expected

    class Sub(cls):
        pass

    assert Sub.provenance == {} and registry.provenance_of(Sub) == {}  # not registered itself


def test_plugins_lists_a_case_conflict_with_both_spellings(install):
    from milzoo.cli.listing import conflict_lines

    install({"upper": _pooling('name = "MEAN"')})
    registry.list_components()
    line = next(l for l in conflict_lines() if "'MEAN'" in l)
    assert "'mean'" in line and '"milzoo:mean"' in line and '"milzoo-fake-upper:MEAN"' in line
