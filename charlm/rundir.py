"""Run directories: how one is recognised, planned, created, replaced and locked.

A run directory holds last.pt, best.pt, metrics.jsonl, config.toml, the encoded data/ and two
small files of charlm's own:

- the marker ``.charlm-run`` (util.RUN_MARKER): JSON with the run's id, creation time and charlm
  version. A folder is a charlm run only when it holds one (or, for runs made before markers
  existed, a config.toml that charlm wrote); file names alone never make a run. Every checkpoint
  carries the same ``run_id``, so a resume can refuse a last.pt copied from another run.
- the lock ``.charlm-lock``: a process that trains into the run holds an exclusive ``flock`` on it
  for as long as it runs (rank 0 under torchrun). The OS drops the lock when the process dies, so
  even a SIGKILL leaves no stale lock; the file names the holder (PID and host) for the message a
  second writer gets.

Validate, then act: ``plan_run_dir`` decides what a launch will do without touching the disk; the
new run is prepared in a hidden sibling folder (``stage``) and only ``commit`` creates or
replaces the run directory, once everything is known to be good. A replacement (``--force``)
deletes only what charlm wrote, never a user's file that happens to sit in the folder.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ._version import __version__
from .errors import RunDirError
from .util import RUN_MARKER

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per run is then the user's business
    fcntl = None

LOCK_FILE = ".charlm-lock"
CHECKPOINTS = ("last.pt", "best.pt")
_DATA_FILES = ("meta.json", "train.bin", "val.bin", "train.bin.tmp", "val.bin.tmp")
_CONFIG_HEADER = "# charlm resolved configuration"


# ----------------------------------------------------------------------------------------------
# What a folder is


def read_marker(path: Path) -> Optional[dict]:
    """The run marker's content, or None when there is no valid one."""
    try:
        with open(Path(path) / RUN_MARKER, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("run_id"), str):
        return None
    return marker


def new_run_id() -> str:
    return uuid.uuid4().hex


def write_marker(folder: Path, run_id: str) -> None:
    """Write folder/.charlm-run atomically (a temporary file, then os.replace)."""
    body = json.dumps({"run_id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "charlm": __version__}) + "\n"
    tmp = Path(folder) / f"{RUN_MARKER}.tmp"
    try:
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, Path(folder) / RUN_MARKER)
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {folder}: {e.strerror or e}") from None


def _charlm_config(path: Path) -> bool:
    """A config.toml that charlm wrote (a user's own config.toml is not a run marker)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith(_CONFIG_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def is_run_dir(path: Path) -> bool:
    """A folder charlm made: it holds the marker, or (a run from before markers) charlm's own
    config.toml, which every launch wrote first."""
    path = Path(path)
    if not path.is_dir():
        return False
    return read_marker(path) is not None or _charlm_config(path / "config.toml")


def looks_like_run(path: Path) -> bool:
    """For listing only (`charlm runs`): a charlm run, or a folder with a checkpoint or a
    metrics.jsonl. Never used to decide what may be deleted or overwritten."""
    path = Path(path)
    return is_run_dir(path) or (path.is_dir() and (has_checkpoint(path) or (path / "metrics.jsonl").is_file()))


def has_checkpoint(path: Path) -> bool:
    return any((Path(path) / n).is_file() for n in CHECKPOINTS)


def is_unstarted_run(path: Path) -> bool:
    """A charlm run killed or failed before its first checkpoint: nothing in it is worth keeping
    but what the user put there, so a plain rerun starts it again in place."""
    return is_run_dir(path) and not has_checkpoint(path)


def _is_empty(path: Path) -> bool:
    return not any(c.name != LOCK_FILE for c in path.iterdir())


def charlm_entries(path: Path) -> list[Path]:
    """What charlm wrote in a run directory (what --force may delete). Everything else, a
    user's notes or the corpus file itself, stays."""
    path = Path(path)
    found = [path / n for n in (RUN_MARKER, *CHECKPOINTS, "metrics.jsonl", ".write-test")
             if (path / n).is_file() and not (path / n).is_symlink()]
    if _charlm_config(path / "config.toml") and not (path / "config.toml").is_symlink():
        found.append(path / "config.toml")
    found += [p for p in path.glob(".*.tmp") if p.is_file() and not p.is_symlink()]
    data = path / "data"
    if data.is_dir() and not data.is_symlink():
        found += [data / n for n in _DATA_FILES if (data / n).is_file()]
    tb = path / "tensorboard"
    if tb.is_dir() and not tb.is_symlink():
        found += [p for p in tb.glob("events.out.tfevents.*") if p.is_file()]
    return found


def _remove_charlm_entries(path: Path) -> None:
    for p in charlm_entries(path):
        p.unlink(missing_ok=True)
    for sub in ("data", "tensorboard"):   # only when nothing of the user's is left in them
        try:
            (path / sub).rmdir()
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------
# One writer per run


@dataclass
class RunLock:
    """An exclusive flock on RUN/.charlm-lock, held until ``release`` or the process's death."""

    path: Path
    fd: int = -1

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text(encoding="utf-8"))
        return f"PID {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def lock_run_dir(folder: Path) -> RunLock:
    """Take the run's lock, or raise RunDirError naming the process that holds it."""
    lock_path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {folder}: {e.strerror or e}") from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"run directory {folder} is in use by a charlm process "
                                  f"({_holder(lock_path)}); wait for it to finish, or choose another --out"
                                  ) from None
            raise RunDirError(f"cannot lock run directory {folder}: {e.strerror or e}") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    except OSError:
        pass  # the lock holds without the note; a second writer is then told "another process"
    return RunLock(lock_path, fd)


# ----------------------------------------------------------------------------------------------
# Validate, then act: plan (no disk writes), stage, commit


@dataclass
class RunPlan:
    """What a launch will do with its run directory, decided before anything is written.

    mode: "create" (the folder does not exist yet), "fill" (an empty folder, an unstarted run, or
    a run replaced with --force: charlm's files go, the staged ones move in) or "resume".
    """

    path: Path
    mode: str
    default_name: bool = False
    lock: Optional[RunLock] = None
    staging: Optional[Path] = None
    made_parents: list = field(default_factory=list)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _check_name(path: Path) -> None:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise RunDirError(f"run directory name {str(path)!r} is not valid UTF-8 (charlm records it in "
                          f"checkpoints and metrics); choose another --out") from None


def plan_run_dir(out: Optional[str], resume: bool, force: bool) -> RunPlan:
    """Decide, without writing anything, what this launch does with its run directory; refuse
    what it must not do. Takes the run's lock when the folder exists already."""
    if out is None:
        if resume:
            raise RunDirError("--resume needs --out DIR naming the run to continue")
        return RunPlan(Path("runs") / time.strftime("%Y%m%d-%H%M%S"), "create", default_name=True)
    path = Path(out).expanduser()
    _check_name(path)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as e:  # a name component too long, a folder that cannot be searched
        raise RunDirError(f"cannot use run directory {path}: {e.strerror or e}") from None
    if exists and not is_dir:
        raise RunDirError(f"run directory {path} is a file; choose another --out")
    if resume:
        if (path / "last.pt").is_file():
            return RunPlan(path, "resume", lock=lock_run_dir(path))
        if not is_unstarted_run(path):
            raise RunDirError(f"cannot resume: {path} has no last.pt (start it without --resume)")
        return RunPlan(path, "fill", lock=lock_run_dir(path))
    if not exists:
        return RunPlan(path, "create")
    try:
        empty = _is_empty(path)
    except OSError as e:
        raise RunDirError(f"cannot read run directory {path}: {e.strerror or e}") from None
    if not empty and not is_unstarted_run(path):
        # A run killed before its first checkpoint is restarted in place without --force; a
        # run with checkpoints, or a folder charlm did not make, needs a decision.
        if not force:
            raise RunDirError(f"run directory {path} already exists; pass --resume to continue it "
                              f"or --force to replace it")
        if not is_run_dir(path):
            raise RunDirError(f"{path} is not a charlm run directory (it has no {RUN_MARKER} marker); "
                              f"refusing to delete it with --force")
        if path.is_symlink():
            raise RunDirError(f"run directory {path} is a symbolic link; refusing to replace what it "
                              f"points to with --force (give the folder itself)")
    return RunPlan(path, "fill", lock=lock_run_dir(path))


def stage(plan: RunPlan) -> Path:
    """A hidden sibling folder where the new run is prepared (same file system as the run, so
    moving it in is a rename). Parent folders made for it are noted and removed on ``discard``."""
    where = plan.path.absolute()   # `--out .` too: staged beside the folder, not inside it
    parent = where.parent
    missing = []
    p = parent
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        for p in reversed(missing):
            p.mkdir()
            plan.made_parents.append(p)
        plan.staging = Path(tempfile.mkdtemp(prefix=f".{where.name}.charlm-new-", dir=parent))
        (plan.staging / ".write-test").write_bytes(b"")
        (plan.staging / ".write-test").unlink()
    except OSError as e:
        discard(plan)
        raise RunDirError(f"cannot write to run directory {plan.path}: {e.strerror or e}") from None
    if plan.mode == "create":
        # The lock goes with the folder when it is renamed into place.
        plan.lock = lock_run_dir(plan.staging)
    return plan.staging


def discard(plan: RunPlan) -> None:
    """Undo ``stage``: the run directory itself was never touched."""
    if plan.staging is not None:
        shutil.rmtree(plan.staging, ignore_errors=True)
        plan.staging = None
    for p in reversed(plan.made_parents):
        try:
            p.rmdir()
        except OSError:
            pass
    plan.made_parents.clear()
    if plan.mode == "fill" and plan.lock is not None and not is_run_dir(plan.path):
        plan.lock.path.unlink(missing_ok=True)   # an empty folder stays as it was


def commit(plan: RunPlan) -> Path:
    """Put the staged run in place: the first moment the run directory is created or changed."""
    staging = plan.staging
    assert staging is not None, "stage() first"
    if plan.mode == "create":
        plan.path = _rename_into_place(staging, plan.path, plan.default_name)
    else:
        _remove_charlm_entries(plan.path)
        _move_into(staging, plan.path)
        shutil.rmtree(staging, ignore_errors=True)
    plan.staging = None
    plan.made_parents.clear()
    return plan.path


def _move_into(src: Path, dst: Path) -> None:
    """Move src's entries into the folder dst; a sub-folder both have (data/ holding a file of
    the user's) is merged."""
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and target.is_dir() and not target.is_symlink():
            _move_into(entry, target)
        else:
            os.replace(entry, target)


def _rename_into_place(staging: Path, target: Path, default_name: bool) -> Path:
    """Rename staging to target atomically; a default name that is taken gets a suffix
    (two runs started in the same second), a name given with --out is refused."""
    base, n = target, 1
    while True:
        try:
            os.rename(staging, target)   # fails when target exists and is not empty
            return target
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise RunDirError(f"cannot create run directory {target}: {e.strerror or e}") from None
        if not default_name:
            if (target / LOCK_FILE).exists():
                lock_run_dir(target).release()   # raises with the holder when it is in use
            raise RunDirError(f"run directory {target} already exists (made while this run was "
                              f"being prepared); pass --resume to continue it or --force to replace it")
        n += 1
        target = base.with_name(f"{base.name}-{n}")


def prepare_run_dir(out: Optional[str], resume: bool, force: bool) -> Path:
    """Plan, stage and commit in one go, for a caller with nothing to validate in between (the
    lock is released on return)."""
    plan = plan_run_dir(out, resume, force)
    try:
        if plan.mode != "resume":
            stage(plan)
            commit(plan)
        return plan.path
    finally:
        plan.release()
