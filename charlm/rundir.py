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

Validate, then act: ``look`` reads what a folder holds (training/launch.py decides from it what a
launch does), ``open_run_dir`` takes the lock and checks nothing changed since; the new run is
prepared in a hidden sibling folder (``stage``) and only ``commit`` creates or
replaces the run directory, once everything is known to be good. A replacement (``--force``)
deletes only what charlm wrote, never a user's file that happens to sit in the folder.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ._version import __version__
from .errors import RunDirError
from .util import RUN_MARKER, open_no_follow, replace_atomically

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per run is then the user's business
    fcntl = None

LOCK_FILE = ".charlm-lock"
ASIDE = ".charlm-old-"          # a replaced run's files, moved aside until the new ones are in
CHECKPOINTS = ("last.pt", "best.pt")
# The files charlm writes at the top of a run folder: each must be a regular file (or absent) for
# a launch to use the folder, so that nothing is written through a link or fails half-way.
RUN_FILES = (RUN_MARKER, LOCK_FILE, *CHECKPOINTS, "metrics.jsonl", "samples.txt", "config.toml")
_DATA_FILES = ("meta.json", "train.bin", "val.bin", "train.bin.tmp", "val.bin.tmp")
_CONFIG_HEADER = "# charlm resolved configuration"


# ----------------------------------------------------------------------------------------------
# What a folder is


def read_marker(path: Path) -> Optional[dict]:
    """The run marker's content, or None when there is no valid one."""
    try:
        with open_no_follow(Path(path) / RUN_MARKER, "r", encoding="utf-8") as f:
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
    try:
        write_run_file(Path(folder) / RUN_MARKER, body)
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {folder}: {e.strerror or e}") from None


def write_run_file(path: Path, text: str) -> None:
    """Write a small text file of a run atomically and without following links: a new file made
    with O_EXCL|O_NOFOLLOW (mkstemp), then os.replace, which replaces a link itself, never its
    target. Raises OSError."""
    replace_atomically(path, text)


def _charlm_config(path: Path) -> bool:
    """A config.toml that charlm wrote (a user's own config.toml is not a run marker)."""
    try:
        with open_no_follow(path, "r", encoding="utf-8") as f:
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
    found = [path / n for n in (RUN_MARKER, *CHECKPOINTS, "metrics.jsonl", "samples.txt", ".write-test")
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

    def check(self) -> None:
        """Raise RunDirError when the lock file was removed or replaced since it was taken: a
        flock lives on the inode, so after an `rm` a second writer could lock a new file and
        train beside this process. Called before every checkpoint save."""
        if self.fd < 0 or fcntl is None:
            return
        try:
            held, now = os.fstat(self.fd), os.stat(self.path, follow_symlinks=False)
            same = (held.st_ino, held.st_dev) == (now.st_ino, now.st_dev)
        except OSError:
            same = False
        if not same:
            raise RunDirError(f"the lock file {self.path} was removed or replaced while this run trained, "
                              f"so another process may be writing the run; stopped without saving. "
                              f"When no other charlm process uses it, continue with --resume")


def lock_note(pid: int, host: str) -> str:
    """What the lock file holds: a line a person reads, then the JSON charlm reads."""
    return (f"charlm run lock: held by pid {pid} on {host} while it trains; removing this file does "
            f"not stop that process (it stops at its next save)\n"
            + json.dumps({"pid": pid, "host": host}) + "\n")


def _holder(lock_path: Path) -> str:
    try:
        with open_no_follow(lock_path, "r", encoding="utf-8") as f:
            lines = f.read().strip().splitlines()
        info = json.loads(lines[-1])   # the last line (locks of older versions are one JSON line)
        return f"PID {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return "another process"


def lock_run_dir(folder: Path) -> RunLock:
    """Take the run's lock, or raise RunDirError naming the process that holds it, or what is
    wrong with the lock file itself (a folder, a link, not writable)."""
    lock_path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunDirError(f"{lock_path} is a symbolic link; charlm does not follow links in a run "
                              f"folder: remove it and run the command again") from None
        if e.errno == errno.EISDIR:
            raise RunDirError(f"{lock_path} is a folder where charlm keeps the run's lock file; move it "
                              f"out of the way and run the command again") from None
        if e.errno in (errno.EACCES, errno.EPERM) and os.path.lexists(lock_path):
            raise RunDirError(f"cannot open the run's lock file {lock_path}: Permission denied; make it "
                              f"writable (chmod u+w) or remove it, and run the command again") from None
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
        os.write(fd, lock_note(os.getpid(), socket.gethostname()).encode())
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


@dataclass(frozen=True)
class Folder:
    """What a run folder holds, read without writing anything: what a launch decides from
    (training/launch.decide), and what the set-up compares against once it holds the lock."""

    exists: bool = False
    is_dir: bool = False
    is_link: bool = False
    empty: bool = True            # nothing in it but (perhaps) the lock file
    is_run: bool = False          # charlm made it (its marker, or charlm's config.toml)
    has_last: bool = False        # last.pt is a file
    unstarted: bool = False       # a charlm run killed before its first checkpoint
    last_identity: Optional[tuple] = None   # last.pt's (size, mtime, inode)
    cut_short: Optional[str] = None  # a .charlm-old-* folder: a replacement killed half-way


def look(path: Path) -> Folder:
    """What ``path`` holds now; RunDirError when it cannot be read or named."""
    _check_name(path)
    try:
        if not os.path.lexists(path):
            return Folder()
        is_dir = path.is_dir()
        if not is_dir:
            return Folder(exists=True, is_link=path.is_symlink())
        last = path / "last.pt"
        identity = None
        if last.is_file():
            st = last.stat()
            identity = (st.st_size, st.st_mtime_ns, st.st_ino)
        cut_short = next((p.name for p in sorted(path.glob(f"{ASIDE}*"))
                          if p.is_dir() and not p.is_symlink()), None)
        is_run = is_run_dir(path)
        return Folder(exists=True, is_dir=True, is_link=path.is_symlink(), empty=_is_empty(path),
                      is_run=is_run, has_last=identity is not None,
                      unstarted=is_run and not has_checkpoint(path), last_identity=identity, cut_short=cut_short)
    except OSError as e:  # a name component too long, a folder that cannot be searched or read
        raise RunDirError(f"cannot use run directory {path}: {e.strerror or e}") from None


def open_run_dir(path: Optional[Path], mode: str, planned: Optional[Folder]) -> RunPlan:
    """The run folder of a launch that was decided (training/launch.decide): for "fill" and
    "resume" the run's lock is taken, then the folder must still be as ``planned`` (another
    process may have started, finished or replaced the run in between). A new run (mode "new")
    is locked when it is staged. Writes nothing but the lock file."""
    if mode == "new":
        if path is None:
            return RunPlan(Path("runs") / time.strftime("%Y%m%d-%H%M%S"), "create", default_name=True)
        return RunPlan(path, "create")
    lock = lock_run_dir(path)
    try:
        now = look(path)
    except BaseException:
        lock.release()
        raise
    if now != planned:
        lock.release()
        raise RunDirError(f"run directory {path} changed while this launch was being prepared (another "
                          f"charlm process?); run the command again")
    return RunPlan(path, "resume" if mode == "resume" else "fill", lock=lock)


def check_obstacles(path: Path) -> None:
    """Refuse a folder where a name charlm writes is taken by something it cannot replace (a
    symbolic link, a folder where a file goes, a file where data/ goes): found now, before
    anything is written, rather than half-way through replacing a run."""
    for name in (*RUN_FILES, "data", "tensorboard"):
        p = path / name
        try:
            if not os.path.lexists(p):
                continue
            kind = _kind(p)
        except OSError as e:
            raise RunDirError(f"cannot read run directory {path}: {e.strerror or e}") from None
        wanted = "a folder" if name in ("data", "tensorboard") else "a regular file"
        if kind != wanted:
            raise RunDirError(f"{p} is {kind} where charlm writes {wanted}; move it out of the way "
                              f"or choose another --out")


def _kind(p: Path) -> str:
    mode = os.lstat(p).st_mode
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def stage(plan: RunPlan) -> Path:
    """A hidden sibling folder where the new run is prepared (same file system as the run, so
    moving it in is a rename). Parent folders made for it are noted and removed on ``discard``."""
    where = plan.path.absolute()   # `--out .` too: staged beside the folder, not inside it
    parent = where.parent
    _remove_stale_staging(where, holds_run_lock=plan.lock is not None)
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
        plan.staging.chmod(0o777 & ~_umask())   # mkdtemp makes 0700; a run folder follows the umask
        (plan.staging / ".write-test").write_bytes(b"")
        (plan.staging / ".write-test").unlink()
    except OSError as e:
        discard(plan)
        raise RunDirError(f"cannot write to run directory {plan.path}: {e.strerror or e}") from None
    if plan.mode == "create":
        # The lock goes with the folder when it is renamed into place.
        plan.lock = lock_run_dir(plan.staging)
    return plan.staging


def _remove_stale_staging(where: Path, holds_run_lock: bool) -> None:
    """Staging folders of this run's name that a launch killed while preparing left behind (a
    SIGKILL gives it no chance to remove its own; one may hold a whole encoded corpus). A new
    run's staging folder holds its own lock, so it is stale when that lock can be taken; a
    replacement's has none, and while this launch holds the run's lock no other can be staging a
    replacement of it."""
    for folder in where.parent.glob(f".{where.name}.charlm-new-*"):
        if folder.is_symlink() or not folder.is_dir():
            continue
        if os.path.lexists(folder / LOCK_FILE):
            try:
                lock_run_dir(folder).release()
            except RunDirError:
                continue   # a live launch is preparing it
        elif not holds_run_lock:
            continue       # perhaps a new run's, made a moment ago and not locked yet
        shutil.rmtree(folder, ignore_errors=True)


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


def name_the_run(error: Exception, plan: Optional[RunPlan], staging: Optional[Path]) -> Exception:
    """``error`` with the hidden staging folder it names (gone once the launch is undone) replaced by
    the run folder the user gave: "cannot write the encoded corpus to runs/x/data", not to
    runs/.x.charlm-new-k3j2/data. Other errors are returned as they are."""
    if plan is None or staging is None or str(staging) not in str(error):
        return error
    renamed = type(error)(str(error).replace(str(staging), str(plan.path)))
    renamed.exit_code = getattr(error, "exit_code", 1)
    return renamed


def commit(plan: RunPlan) -> Path:
    """Put the staged run in place: the first moment the run directory is created or changed."""
    staging = plan.staging
    assert staging is not None, "stage() first"
    if plan.mode == "create":
        plan.path = _rename_into_place(staging, plan.path, plan.default_name)
        if plan.lock is not None:
            plan.lock.path = plan.path / LOCK_FILE   # the lock file moved with its folder
    else:
        _replace_contents(staging, plan.path)
        shutil.rmtree(staging, ignore_errors=True)
    plan.staging = None
    plan.made_parents.clear()
    return plan.path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace_contents(staging: Path, run: Path) -> None:
    """Replace charlm's files in run by the staged ones, all or nothing: the old files are moved
    aside into a hidden folder inside the run (same file system, so every move is a rename), the
    new ones moved in, and only then the old ones deleted. A failure at any move undoes the moves
    made so far, in reverse, and the old run is as it was."""
    try:
        aside = Path(tempfile.mkdtemp(prefix=ASIDE, dir=run))
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {run}: {e.strerror or e}") from None
    journal: list[tuple[str, Path, Path]] = []   # ("move", src, dst) or ("mkdir", dir, dir)
    try:
        for old in charlm_entries(run):
            _journaled_move(old, aside / old.relative_to(run), journal)
        for new in _staged_files(staging):
            _journaled_move(new, run / new.relative_to(staging), journal)
    except BaseException as e:
        _undo(journal)
        shutil.rmtree(aside, ignore_errors=True)
        if isinstance(e, OSError):
            raise RunDirError(f"cannot replace run directory {run}: {e.strerror or e}; the old run "
                              f"is unchanged") from None
        raise
    shutil.rmtree(aside, ignore_errors=True)
    for left in run.glob(f"{ASIDE}*"):   # an earlier replacement's, cut short: replaced now too
        if left.is_dir() and not left.is_symlink():
            shutil.rmtree(left, ignore_errors=True)
    try:
        (run / "tensorboard").rmdir()   # only when nothing of the user's is left in it
    except OSError:
        pass


def _staged_files(staging: Path) -> list[Path]:
    """Every file of the staged run (the lock stays behind: the run's own lock is held)."""
    found = []
    for folder, _, files in os.walk(staging):
        found += [Path(folder) / f for f in sorted(files) if not (Path(folder) == staging and f == LOCK_FILE)]
    return found


def _journaled_move(src: Path, dst: Path, journal: list) -> None:
    """Rename src to dst, making dst's missing parent folders; each step noted for ``_undo``."""
    missing = []
    p = dst.parent
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        os.mkdir(d)
        journal.append(("mkdir", d, d))
    if os.path.lexists(dst):   # the obstacle check ran at plan time; a file that appeared since
        raise FileExistsError(errno.EEXIST, f"{dst.name} appeared while the run was being replaced")
    os.replace(src, dst)
    journal.append(("move", src, dst))


def _undo(journal: list) -> None:
    for kind, a, b in reversed(journal):
        try:
            if kind == "move":
                os.replace(b, a)
            else:
                os.rmdir(a)
        except OSError:
            pass   # nothing better to do: the rest is still put back


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
