"""Every exception and warning milzoo raises on purpose, in one place.

:class:`MilzooError` is the base of every error.  Two branches sit under it:

- :class:`UserError`: a problem the user can fix (a bad recipe, an unknown component name, a missing file,
  a plugin that failed to load as seen from the name it would have provided).  The CLI prints its message as
  one paragraph and exits with code 2; there is never a traceback.
- :class:`PluginError`: a plugin broke a rule of the registry.  Only the plugin's author can fix it, so the
  registry never raises it at users: it records it against that plugin (``milzoo plugins`` shows it) and
  keeps everything else working.

:class:`MilzooWarning` is the base of every warning.  The modules that raise these classes import them from
here, so ``from milzoo.hub import HubError`` and the other old import paths keep working.
"""

from __future__ import annotations


class MilzooError(Exception):
    """Base class of every error raised on purpose by milzoo."""


# --------------------------------------------------------------------------- errors a user can fix


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


class UnknownRecipeError(UserError):
    """No installed distribution ships a recipe of that name."""


class AmbiguousRecipeError(UnknownRecipeError):
    """Two or more distributions ship a recipe of that name; qualify it as ``distribution:name``."""


class ComponentError(UserError):
    """A component was asked for something it cannot do (e.g. PSAli without instance scoring)."""


class DataError(UserError):
    """A data file is missing, unreadable or inconsistent."""


class MissingExtraError(UserError):
    """An optional package a chosen feature needs is not installed; the message names the extra that installs it
    (``pip install "milzoo[tensorboard]"``)."""


class LoggerError(UserError):
    """An experiment logger could not start or finish (a tracking server that refuses, an unwritable folder)."""


class DownloadError(DataError):
    """A download a command needed failed (offline, a server error); the message names the command that fetches
    it ahead of time (``milzoo data fetch NAME``)."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt or does not match the model it is loaded into."""


class ConversionError(CheckpointError):
    """Weights from another toolkit cannot be converted (``milzoo convert``): the file is not a plain state dict of
    tensors, or its keys or shapes are not those of the format named."""


class RunDirError(UserError):
    """The run directory cannot be used (exists already, or is not a milzoo run)."""


class TrainingDiverged(UserError):
    """The loss became non-finite; the last good checkpoint is kept."""


class UnpublishedModelError(UserError):
    """A pretrained entry whose weights are not on the Hub yet."""


class HubError(UserError):
    """Talking to the Hugging Face Hub failed (login, network, server)."""


class HubNotFoundError(HubError):
    """The repository, revision or file does not exist on the Hub."""


class OfflineNotCachedError(HubError):
    """Offline (or the Hub unreachable) and the model is not in the local cache."""


# --------------------------------------------------------------------------- errors a plugin's author must fix


class PluginError(MilzooError):
    """A plugin broke a rule of the registry; it is recorded against that plugin, never raised at users."""


class RegistrationError(PluginError):
    """A plugin registered something its kind does not accept (wrong class, invalid name, a name twice)."""


class RecipeRegistrationError(RegistrationError):
    """A plugin registered something that is not a recipe file or directory, or an invalid name."""


class PluginConflictError(PluginError):
    """Two entry points that load the same module."""


# --------------------------------------------------------------------------- warnings


class MilzooWarning(UserWarning):
    """Base class of every warning milzoo issues."""


class CheckpointWarning(MilzooWarning):
    """A checkpoint loaded but holds something suspicious (e.g. non-finite buffers)."""
