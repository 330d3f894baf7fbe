"""Core CLI command modules; each exposes ``add_commands(cli)``."""
