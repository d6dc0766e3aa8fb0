"""metrics.jsonl: one JSON object per line for every chunk report, evaluation and notice.

On resume the file is cut back to where it stood when the checkpoint was written, so the log of
a resumed run reads exactly like the log of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from .errors import RunDirError
from .events import Event
from .util import json_safe, open_no_follow, run_write_error


class MetricsLog:
    """The run's metrics.jsonl, appended to (rank 0 only). A write that fails (a full disk, a
    folder gone read-only) raises RunDirError with the cause, never an OSError traceback."""

    def __init__(self, path: Path, truncate_to: Optional[int] = None):
        self.path = Path(path)
        try:
            if truncate_to is not None and self.path.exists():
                with open_no_follow(self.path, "r+b") as f:
                    f.truncate(min(truncate_to, os.path.getsize(self.path)))
            self.file = open_no_follow(self.path, "a", encoding="utf-8", buffering=1 << 16)
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: OSError) -> RunDirError:
        return RunDirError(run_write_error(self.path, e))

    def write(self, event: Event) -> None:
        try:
            self.file.write(json.dumps(json_safe(event.to_json()), ensure_ascii=False) + "\n")
        except OSError as e:
            raise self._error(e) from None

    def offset(self) -> int:
        """Bytes written so far (flushed first), to store in a checkpoint."""
        self.flush()
        return self.file.tell()

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as e:
            raise self._error(e) from None

    def close(self) -> None:
        """Close the file; a failing last flush is dropped (closing runs in a ``finally``, where
        a second error would hide the first)."""
        if not self.file.closed:
            try:
                self.file.close()
            except OSError:
                pass


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a crash is skipped)."""
    return scan_metrics(path)[0]


def scan_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a metrics.jsonl, and how many damaged lines were skipped.

    A line that is not UTF-8, not JSON, or JSON but not an object (a hand edit, another program's
    file) is skipped and counted; a torn last line (a crash mid-write: no newline) is skipped
    without counting, as it is expected. A file that cannot be read at all is a RunDirError."""
    records, bad, torn = [], 0, False
    try:
        with open(path, "rb") as f:
            for raw in f:  # line by line: a long run's log is never held as text twice
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    rec = None
                if isinstance(rec, dict):
                    records.append(rec)
                    torn = False
                elif raw.strip():
                    bad += 1
                    torn = not raw.endswith(b"\n")  # only the last line can lack its newline
    except OSError as e:
        raise RunDirError(f"cannot read {path}: {e.strerror or e}") from None
    return records, bad - torn
