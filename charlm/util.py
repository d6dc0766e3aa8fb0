"""Small helpers several modules need, written once: finite numbers, JSON-safe values, CSV text,
the TOML reader, the name of the file that marks a folder as a charlm run,
and opening a file in a run without following a symbolic link.

The bottom layer, beside config.py and errors.py: imports nothing of charlm but threads.py (itself
bottom layer), and torch only inside the function that needs it.
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import stat
import sys
import tempfile
from typing import Any, Optional

# The one TOML shim: the standard library's reader from Python 3.11, the tomli package before.
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

# A folder is a charlm run only when it holds this file (written by charlm, carrying the run id).
# Corpus folders skip any folder that holds one, so a run directory is never read as text.
RUN_MARKER = ".charlm-run"

# open() modes as os.open flags, for the files charlm writes in a run folder.
_FLAGS = {"r": os.O_RDONLY, "rb": os.O_RDONLY, "r+b": os.O_RDWR,
          "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
          "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC}


def open_no_follow(path: Any, mode: str, **kwargs: Any):
    """open(path, mode), except that a symbolic link at path is refused (OSError ELOOP with a
    plain reason) instead of followed: a link planted in a run folder must not make charlm
    truncate or append to a file elsewhere. Modes: r, rb, r+b, a, ab, w, wb."""
    flags = _FLAGS[mode] | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "it is a symbolic link, which charlm does not follow in a run "
                                       "folder (remove it)", str(path)) from None
        raise
    return os.fdopen(fd, mode, **kwargs)


def write_user_file(path: Any, text: str) -> None:
    """Write a document the user named (--json FILE, --csv FILE) so that a failure (a full disk)
    leaves no empty or half-written file: the text goes to a temporary file beside it, which is
    renamed over it once complete and removed on any failure. A link is followed (the file it names
    is the one replaced); a device or FIFO (/dev/stdout, a pipe) is written directly, since it
    cannot be replaced. Raises OSError."""
    try:
        direct = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        direct = False
    if direct:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        return
    replace_atomically(os.path.realpath(path), text, newline="")


def replace_atomically(path: Any, text: str, newline: Optional[str] = None) -> None:
    """Write text to a new file beside ``path`` (mkstemp: O_EXCL, so never through a link), made
    an ordinary file under the umask, then os.replace it over ``path``: a reader sees the old file
    or the whole new one, and a failure (a full disk) removes the temporary file. Raises OSError."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(path) or ".")
    try:
        mask = os.umask(0o022)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)   # mkstemp makes 0600; these are ordinary files
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            fd = -1
            f.write(text)
        os.replace(tmp, path)
        tmp = None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            os.unlink(tmp)


def run_write_error(path: Any, e: OSError) -> str:
    """The message for a log of a run (metrics.jsonl, samples.txt) that could not be written: what
    is wrong and what to do, from the cause. Only a full disk is worth "free some space"."""
    reason = e.strerror or str(e)
    if e.errno == errno.EISDIR:
        fix = f"{path} is a folder where charlm keeps a file: move it out of the way"
    elif e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG):
        fix = "free some space"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make it writable"
    elif e.errno == errno.ELOOP:
        fix = "remove the link"
    else:
        fix = "fix the cause"
    return (f"cannot write {path}: {reason} (the last checkpoint is intact; {fix} and continue "
            f"with --resume)")


def is_finite_number(x: Any) -> bool:
    """A real int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def finite_or_none(x: Any) -> Optional[float]:
    """x as a float when it is a finite number, else None (for tables and JSON)."""
    return float(x) if is_finite_number(x) else None


def json_safe(value: Any) -> Any:
    """value with every non-finite float replaced by None, recursively (JSON has no NaN/Infinity;
    null is what a JSON reader in any language understands)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def csv_text(rows: list[list[Any]]) -> str:
    """Rows as CSV text, floats to 6 significant digits: the one CSV writer every --csv uses."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    return buf.getvalue()


def human_bytes(n: float) -> str:
    """A size as every message gives it, in decimal units: '812 bytes', '3.4 MB', '12 GB'."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("not reached")
