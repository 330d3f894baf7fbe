"""Errors that reach users.

Every error a user can fix (a bad recipe, an unknown component name, a missing
file, a broken plugin) derives from :class:`UserError`.  The CLI prints its
message as one paragraph and exits with code 2; there is never a traceback.
"""

from __future__ import annotations


class MilzooError(Exception):
    """Base class of every error raised on purpose by milzoo."""


class UserError(MilzooError):
    """A problem the user can fix.  The message names the problem and the fix."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe failed to parse or validate.  ``problems`` lists every issue found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        plural = "s" if len(self.problems) != 1 else ""
        super().__init__(
            f"recipe {source} has {len(self.problems)} problem{plural}:\n{lines}\n"
            "Fix these entries (run `milzoo list` to see component names and "
            "`milzoo validate RECIPE` to re-check) and try again."
        )


class UnknownComponentError(UserError):
    """A registry name that resolves to no single component (nothing, or several providers, registered it)."""


class AmbiguousComponentError(UnknownComponentError):
    """A bare registry name that more than one distribution registers; qualify it as ``distribution:name``."""


class ComponentError(UserError):
    """A component was asked for something it cannot do (e.g. PSAli without instance scoring)."""


class DataError(UserError):
    """A data file is missing, unreadable or inconsistent."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt or does not match the model it is loaded into."""


class RunDirError(UserError):
    """The run directory cannot be used (exists already, or is not a milzoo run)."""


class TrainingDiverged(UserError):
    """The loss became non-finite; the last good checkpoint is kept."""
