"""milzoo: a plugin-based zoo of deep multiple-instance-learning models."""

from milzoo.hookspecs import hookimpl

__all__ = ["hookimpl"]
