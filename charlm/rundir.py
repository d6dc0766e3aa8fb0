"""Run directories: where a run lives, how one is recognised, created, and replaced.

A run directory holds last.pt, best.pt, metrics.jsonl, config.toml and the encoded data/.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

from .errors import RunDirError

RUN_MARKERS = ("last.pt", "best.pt", "metrics.jsonl", "config.toml")


def default_run_dir(root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = root / stamp
    n = 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


def is_run_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    if any((path / m).exists() for m in RUN_MARKERS if m != "config.toml"):
        return True
    return _charlm_config(path / "config.toml")


def _charlm_config(path: Path) -> bool:
    """A config.toml that charlm wrote (a user's own config.toml is not a run marker)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith("# charlm resolved configuration")
    except (OSError, UnicodeDecodeError):
        return False


def is_unstarted_run(path: Path) -> bool:
    """A run directory with no checkpoint yet: only what a launch writes before its first save
    (the encoded data, config.toml, metrics.jsonl, a temporary file of a save cut short)."""
    if not path.is_dir() or any((path / n).exists() for n in ("last.pt", "best.pt")):
        return False
    for c in path.iterdir():
        if c.name == "config.toml":
            if not _charlm_config(c):   # a user's own config.toml there is theirs to keep
                return False
        elif c.name == "data":
            if not c.is_dir() or any(f.name not in ("meta.json", "train.bin", "val.bin", "train.bin.tmp",
                                                    "val.bin.tmp") for f in c.iterdir()):
                return False
        elif not (c.name in ("metrics.jsonl", ".write-test")
                  or (c.name.startswith(".") and c.name.endswith(".tmp"))):
            return False
    return True


def prepare_run_dir(out: Optional[str], resume: bool, force: bool) -> Path:
    """Create (or check, for --resume) the run directory. Never deletes what is not a run."""
    if out is None:
        if resume:
            raise RunDirError("--resume needs --out DIR naming the run to continue")
        path = default_run_dir()
    else:
        path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} is a file; choose another --out")
    if resume and (path / "last.pt").is_file():
        return path
    if resume and not is_unstarted_run(path):
        raise RunDirError(f"cannot resume: {path} has no last.pt (start it without --resume)")
    # A run that failed or was killed before its first checkpoint holds only files derived from
    # the options; it is started again in place, so a mistake fixed on a rerun needs no --force.
    if path.exists() and any(path.iterdir()) and not is_unstarted_run(path):
        if not force:
            raise RunDirError(f"run directory {path} already exists; pass --resume to continue it "
                              f"or --force to replace it")
        if not is_run_dir(path):
            raise RunDirError(f"{path} is not a charlm run directory (no last.pt, metrics.jsonl or "
                              f"config.toml); refusing to delete it with --force")
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {path}: {e.strerror or e}") from None
    return path
