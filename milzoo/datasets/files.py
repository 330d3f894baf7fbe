"""Opening the data files a recipe names: regular files only, of a size that fits in memory, CSV read with errors
that name the line.

A data path is the user's, but it can still be a mistake no reader survives: ``/dev/zero`` or a named pipe
(reading never ends), a folder, or a file far larger than the memory it would be read into.  These are refused
before a byte is read, with a :class:`~milzoo.errors.DataError` naming the file and the fix.  Every loader that
reads a whole data file into memory goes through :func:`read_data_bytes`; a loader that opens a local file
itself (memory-mapped features) checks it with :func:`check_data_file` first.

The limit on a whole-file read is half the memory available when the read starts (``MemAvailable`` on Linux,
the physical memory elsewhere), or ``MILZOO_MAX_DATA_BYTES`` (bytes) when set.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from collections.abc import Sequence

import numpy as np

from milzoo.errors import DataError

log = logging.getLogger(__name__)

#: environment variable: the largest data file read into memory whole, in bytes (default: half the memory free)
MAX_DATA_BYTES_ENV = "MILZOO_MAX_DATA_BYTES"
#: what is assumed free when the system does not say
_FALLBACK_MEMORY = 8 * 2**30


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return _FALLBACK_MEMORY


def max_data_bytes() -> int:
    """The largest data file milzoo reads into memory whole: ``MILZOO_MAX_DATA_BYTES``, else half the free memory."""
    value = os.environ.get(MAX_DATA_BYTES_ENV)
    if value is not None and value.strip():
        try:
            limit = int(value.strip())
        except ValueError:
            limit = 0
        if limit <= 0:
            raise DataError(f"{MAX_DATA_BYTES_ENV}={value!r} is not a number of bytes; give a positive integer "
                            f"(e.g. {MAX_DATA_BYTES_ENV}=8000000000) or unset it.")
        return limit
    return max(_available_memory() // 2, 1)


def human_bytes(n: int) -> str:
    """``1.5 GiB``, ``12 KiB``, ``300 bytes``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _local(url: str) -> str | None:
    if "://" not in url:
        return os.path.expanduser(url)
    if url.startswith("file://"):
        return url[len("file://"):]
    return None


def check_data_file(url: str, what: str = "data file", missing_hint: str = "check the path in the recipe",
                    must_exist: bool = True) -> int | None:
    """Refuse a path that is missing, a folder, or not a regular file (a device, a pipe, a socket); its size.

    The size is None for a remote file whose store does not say, and for a missing local file when not
    ``must_exist`` (the caller reports that one itself).  Nothing is opened: a named pipe would block.
    """
    local = _local(url)
    if local is not None:
        try:
            st = os.stat(local)
        except FileNotFoundError:
            if not must_exist:
                return None
            raise DataError(f"{what} {url} does not exist; {missing_hint}.") from None
        except OSError as exc:
            raise DataError(f"cannot read {what} {url} ({exc.strerror or exc}); {missing_hint}.") from None
        if stat.S_ISDIR(st.st_mode):
            raise DataError(f"{what} {url} is a folder, not a file; {missing_hint}.")
        if not stat.S_ISREG(st.st_mode):
            kind = ("a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "a named pipe" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                    else "not a regular file")
            raise DataError(f"{what} {url} is {kind}, not a regular file: reading it might never end (/dev/zero) or "
                            f"wait forever (a pipe), so it is refused; {missing_hint}.")
        return int(st.st_size)
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    except FileNotFoundError:
        raise DataError(f"{what} {url} does not exist; {missing_hint}.") from None
    except Exception as exc:  # noqa: BLE001 - any backend's error
        raise DataError(f"cannot read {what} {url} ({type(exc).__name__}: {exc}); check the URL, the network "
                        "and the credentials.") from None
    if info.get("type") not in (None, "file"):
        raise DataError(f"{what} {url} is a {info.get('type')}, not a file; {missing_hint}.")
    size = info.get("size")
    return int(size) if isinstance(size, (int, float)) and size >= 0 else None


def _too_large(url: str, what: str, size: int | None, limit: int) -> DataError:
    shown = f"{human_bytes(size)}" if size is not None else f"more than {human_bytes(limit)}"
    return DataError(
        f"{what} {url} is {shown}, more than milzoo reads into memory at once ({human_bytes(limit)}: half the "
        f"memory free now, or {MAX_DATA_BYTES_ENV}); check that this is the file you meant. If it is, free memory "
        f"or set {MAX_DATA_BYTES_ENV} to its size in bytes.")


def read_data_bytes(url: str, what: str = "data file", missing_hint: str = "check the path in the recipe") -> bytes:
    """The whole content of a data file (a local path or any fsspec URL), after :func:`check_data_file` and a
    size check against :func:`max_data_bytes`; never more than that is read, even from a file that grows."""
    size = check_data_file(url, what, missing_hint)
    limit = max_data_bytes()
    if size is not None and size > limit:
        raise _too_large(url, what, size, limit)
    import fsspec

    try:
        with fsspec.open(url, "rb") as fh:
            raw = fh.read(limit + 1)
    except FileNotFoundError:
        raise DataError(f"{what} {url} does not exist; {missing_hint}.") from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read {what} {url} ({type(exc).__name__}: {exc}); check the path or URL.") from None
    if len(raw) > limit:
        raise _too_large(url, what, None, limit)
    return raw


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("#", 1)[0].split(",")]


def csv_problem(text: str, first_line: int = 1) -> str | None:
    """What makes ``text`` not a numeric CSV, naming the line: a row of another length, or a cell that is not a
    number.  ``first_line`` is the file's line number of the text's first line (2 after a header)."""
    width, width_line = None, 0
    for number, line in enumerate(text.splitlines(), start=first_line):
        if not line.split("#", 1)[0].strip():
            continue
        cells = _cells(line)
        if width is None:
            width, width_line = len(cells), number
        elif len(cells) != width:
            return (f"line {number} has {len(cells)} values where line {width_line} has {width}; every row needs "
                    "the same columns (a value missing or an extra comma on that line, or two files of different "
                    "layouts joined)")
        for column, cell in enumerate(cells, start=1):
            try:
                float(cell)
            except ValueError:
                shown = repr(cell[:40]) + ("..." if len(cell) > 40 else "")
                why = "is empty" if not cell else f"holds {shown}, which is not a number"
                return f"line {number}, column {column} {why}"
    return None


def parse_numeric_csv(text: str | bytes, source: str, dtype=np.float64, first_line: int = 1,
                      layout: str = "") -> np.ndarray:
    """A numeric CSV (no header; ``#`` comments and blank lines skipped) as a 2-D array.

    A row of another length or a cell that is not a number is a :class:`DataError` naming the line and column
    (never numpy's own advice); ``layout`` describes the expected columns in the message.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DataError(f"{source} is not UTF-8 text; it should be a CSV file of numbers{layout}.") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": the caller reports an empty table
            return np.loadtxt(io.StringIO(text), delimiter=",", dtype=dtype, ndmin=2, comments="#")
    except ValueError as exc:
        problem = csv_problem(text, first_line)
        if problem is None:  # not found line by line: numpy's first sentence, without its advice
            problem = str(exc).split(";")[0].rstrip(".")
        raise DataError(f"{source} is not a numeric CSV{layout}: {problem}. Fix that line and try again.") from None


def describe_rows(rows: Sequence[int], limit: int = 6) -> str:
    """``rows 3, 7 and 9`` / ``rows 3, 7, 9, ... (12 in all)`` for 1-based row numbers."""
    rows = [int(r) for r in rows]
    if len(rows) == 1:
        return f"row {rows[0]}"
    if len(rows) <= limit:
        return "rows " + ", ".join(map(str, rows[:-1])) + f" and {rows[-1]}"
    return "rows " + ", ".join(map(str, rows[:limit])) + f", ... ({len(rows)} in all)"
