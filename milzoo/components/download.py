"""What a plugin downloads, and how a failed download is told to the user.

A component that downloads files on first use (a dataset through torchvision, ImageNet weights) registers a
:class:`Download` through the ``milzoo_register_downloads`` hook, so that ``milzoo data fetch NAME`` can get
the files ahead of time, on a machine with a network, into the very place the component reads them from.
The component itself downloads inside :func:`downloading`: any failure (no network above all) becomes a
:class:`~milzoo.errors.DownloadError` naming that command, never a traceback of ``urllib``.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import logging
import shlex
import socket
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from milzoo.errors import DownloadError, UserError

log = logging.getLogger(__name__)

#: errno values that mean "no network", whoever raised them
_NETWORK_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT,
                   errno.ENETDOWN, errno.EHOSTDOWN, errno.ECONNABORTED}


@dataclass(frozen=True)
class Download:
    """Files a component downloads, fetched ahead of time with ``milzoo data fetch NAME``.

    ``fetch(root)`` downloads them (``root``: the folder a recipe names, ``None`` for the default) and returns
    where they are; ``destination(root)`` says where they go without downloading anything.  ``summary`` is one
    line: what it is, about how large, and which components read it.  ``uses_root`` is False for files whose
    place is not a recipe's (torchvision's weights go to the torch hub cache, ``$TORCH_HOME``).
    """

    name: str
    summary: str
    fetch: Callable[[Path | None], Path]
    destination: Callable[[Path | None], Path]
    uses_root: bool = True


def fetch_command(name: str, root: str | Path | None = None) -> str:
    """The command that fetches ``name`` ahead of time (``--root`` when the recipe names a folder)."""
    words = ["milzoo", "data", "fetch", name]
    if root is not None:
        words += ["--root", str(root)]
    return shlex.join(words)


def is_network_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the network could not be reached."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, urllib.error.HTTPError):
            return False  # a server answered
        if isinstance(err, (socket.gaierror, socket.timeout, ConnectionError, TimeoutError,
                            http.client.RemoteDisconnected)):
            return True
        if isinstance(err, OSError) and err.errno in _NETWORK_ERRNOS:
            return True
        if isinstance(err, urllib.error.URLError):
            reason = err.reason
            if isinstance(reason, BaseException):
                todo.append(reason)
            else:
                return True  # URLError("<urlopen error ...>") without an exception: no connection was made
        todo += [err.__cause__, err.__context__]
    return False


def download_failed_message(what: str, name: str, where: str | Path, exc: BaseException,
                            root: str | Path | None = None) -> str:
    """The one paragraph a failed download of ``what`` (the :class:`Download` ``name``) deserves."""
    command = fetch_command(name, root)
    detail = f"{type(exc).__name__}: {exc}"
    if is_network_error(exc):
        return (f"downloading {what} failed: the network cannot be reached ({detail}). On a machine with a network, "
                f"run `{command}` (it stores the files in {where}), then copy {where} to the same place on this "
                "machine (or set MILZOO_DATA_DIR, or the recipe's `root`, to where you copied it) and run again; "
                "`milzoo data list` shows every download and where it goes (docs/cli.md, 'Offline machines').")
    return (f"downloading {what} into {where} failed ({detail}). Try again with `{command}`; if it fails the same "
            f"way, delete the partly downloaded files in {where} first, or copy the files from a machine that has "
            "them (`milzoo data list` shows where each download goes).")


@contextlib.contextmanager
def downloading(what: str, name: str, where: str | Path, root: str | Path | None = None) -> Iterator[None]:
    """Run a download: any failure becomes a :class:`DownloadError` naming ``milzoo data fetch NAME``.

    ``what`` names the files in words ("CIFAR-10"), ``name`` their :class:`Download`, ``where`` the folder they
    go to and ``root`` the folder a recipe named (repeated in the command).  A :class:`UserError` and Ctrl-C
    go through unchanged.
    """
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - every failure of a download is told the same way
        log.debug("download of %s failed", what, exc_info=True)
        raise DownloadError(download_failed_message(what, name, where, exc, root)) from None
