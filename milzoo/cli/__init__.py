"""The ``milzoo`` command line: ``main`` (the console script) and the click group ``cli``.

Commands live in small modules (``hub``, ``recipes``, ``report``; tables in ``listing``), each with
``add_commands(cli)``; plugins add theirs through the ``milzoo_register_commands`` hook.
"""

from milzoo._lazy import attach

_EXPORTS = {
    # _app
    "main": "_app", "run_cmd": "_app", "validate_cmd": "_app", "list_cmd": "_app", "plugins_cmd": "_app",
    "summarize_cmd": "_app", "cli": "_app", "MilzooGroup": "_app", "add_all_commands": "_app", "format_summary": "_app",
    "warnings_to_stderr": "_app", "CORE_COMMAND_MODULES": "_app",
}

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
del attach
