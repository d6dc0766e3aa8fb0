"""metrics.jsonl: one JSON object per line for every chunk report, evaluation and notice.

On resume the file is cut back to where it stood when the checkpoint was written, so the log of
a resumed run reads exactly like the log of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from .events import Event
from .util import json_safe




class MetricsLog:
    def __init__(self, path: Path, truncate_to: Optional[int] = None):
        self.path = Path(path)
        if truncate_to is not None and self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(min(truncate_to, os.path.getsize(self.path)))
        self.file = open(self.path, "a", encoding="utf-8", buffering=1 << 16)

    def write(self, event: Event) -> None:
        self.file.write(json.dumps(json_safe(event.to_json()), ensure_ascii=False) + "\n")

    def offset(self) -> int:
        """Bytes written so far (flushed first), to store in a checkpoint."""
        self.file.flush()
        return self.file.tell()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a crash is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
