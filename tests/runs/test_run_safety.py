"""Never lose a run, round three (issue 23): replacing a run is all or nothing, nothing is written
through a symbolic link planted in a run, a removed lock stops the writer that held it, and what
--force may replace or delete."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import charlm.rundir as rundir
from charlm.checkpoint import load_checkpoint
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import RunDirError
from charlm.training import train
from charlm.training.launch import decide
from charlm.util import RUN_MARKER
from test_rundir import TINY, cli, corpus, finished_run, one_line_error  # noqa: F401 (fixtures)


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry below folder (links as their target's name, not followed), but the lock."""
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.name == rundir.LOCK_FILE:
            continue
        out[rel] = (f"link:{os.readlink(p)}" if p.is_symlink() else
                    "dir" if p.is_dir() else p.read_bytes())
    return out


# --- replacing a run is all or nothing ------------------------------------------------------

def _staged_replacement(run: Path) -> rundir.RunPlan:
    """A --force replacement of run, staged by hand: a marker and three data files."""
    path, folder, mode = decide(str(run), resume=False, force=True)
    plan = rundir.open_run_dir(path, mode, folder)
    staging = rundir.stage(plan)
    rundir.write_marker(staging, "f" * 32)
    (staging / "data").mkdir()
    for name in ("meta.json", "train.bin", "val.bin"):
        (staging / "data" / name).write_text("new " + name)
    return plan


def test_a_failure_at_any_step_of_a_replacement_puts_the_old_run_back(finished_run, monkeypatch):
    (finished_run / "notes.txt").write_text("mine")
    (finished_run / "samples.txt").write_text("--- step 3 ---\nold\n\n")
    before = snapshot(finished_run)
    real_replace = os.replace
    n = 0
    while True:   # fail the n-th os.replace of the commit, for n = 1, 2, ... until none fails
        n += 1
        plan = _staged_replacement(finished_run)
        calls = []

        def flaky(src, dst, *args, **kwargs):
            calls.append(src)
            if len(calls) == n:
                raise OSError(errno.EIO, "Input/output error")
            return real_replace(src, dst, *args, **kwargs)
        monkeypatch.setattr(os, "replace", flaky)
        try:
            rundir.commit(plan)
        except RunDirError as e:
            monkeypatch.setattr(os, "replace", real_replace)
            assert "the old run is unchanged" in str(e)
            assert snapshot(finished_run) == before, n
            assert not list(finished_run.glob(".charlm-old-*"))
            rundir.discard(plan)
            plan.release()
            continue
        monkeypatch.setattr(os, "replace", real_replace)
        plan.release()
        break
    assert n > 8   # every old file moved aside and every new one moved in was a step that failed
    after = snapshot(finished_run)
    assert rundir.read_marker(finished_run)["run_id"] == "f" * 32
    assert after["data/meta.json"] == b"new meta.json" and after["notes.txt"] == b"mine"
    for gone in ("last.pt", "best.pt", "metrics.jsonl", "config.toml", "samples.txt"):
        assert gone not in after   # the replaced run's files, samples.txt too
    assert not list(finished_run.glob(".charlm-old-*"))


@pytest.mark.parametrize("obstacle", ["data-link", "config-folder", "marker-folder", "metrics-link"])
def test_force_over_an_obstacle_is_refused_before_anything_changes(tmp_path, corpus, finished_run, obstacle):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    if obstacle == "data-link":
        os.rename(finished_run / "data", elsewhere / "data")
        (finished_run / "data").symlink_to(elsewhere / "data")
    elif obstacle == "metrics-link":
        (finished_run / "metrics.jsonl").unlink()
        (finished_run / "metrics.jsonl").symlink_to(elsewhere / "keep.txt")
    else:
        name = "config.toml" if obstacle == "config-folder" else RUN_MARKER
        (finished_run / name).unlink()
        (finished_run / name).mkdir()
    before, outside = snapshot(finished_run), snapshot(elsewhere)
    r = cli("train", corpus, "--out", finished_run, "--force", *TINY)
    one_line_error(r, "move it out of the way or choose another --out")
    assert snapshot(finished_run) == before and snapshot(elsewhere) == outside
    assert not list(tmp_path.glob(".*charlm-new-*"))


def test_a_new_run_folder_follows_the_umask(tmp_path, corpus):
    old = os.umask(0o002)
    try:
        r = cli("train", corpus, "--out", tmp_path / "shared", *TINY)
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o775


# --- nothing is written through a link --------------------------------------------------------

@pytest.mark.parametrize("name", [rundir.LOCK_FILE, "metrics.jsonl", "config.toml", "best.pt", "samples.txt"])
def test_a_link_planted_in_a_run_is_never_written_through(tmp_path, finished_run, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (finished_run / name).unlink(missing_ok=True)
    (finished_run / name).symlink_to(victim)
    r = cli("train", "--out", finished_run, "--resume", "--max-steps", "6", "--sample-length", "8")
    if r.exit_code != 0:
        one_line_error(r, "symbolic link")
    assert victim.read_text() == "precious"
    if r.exit_code == 0:   # a file replaced atomically: the link itself was replaced
        assert not (finished_run / name).is_symlink()


def test_a_link_as_the_lock_of_a_new_folder_is_refused(tmp_path, corpus):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / rundir.LOCK_FILE).symlink_to(victim)
    one_line_error(cli("train", corpus, "--out", empty, *TINY), "symbolic link")
    assert victim.read_text() == "precious"


# --- the lock ---------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["folder", "read-only"])
def test_a_lock_that_is_a_folder_or_read_only_is_named_as_such(finished_run, monkeypatch, how):
    """Was: "cannot write to run directory runE: Is a directory" (or "Permission denied"), which
    sends the user to the folder's permissions. The message names the lock file and what is wrong.
    (Read-only is made by failing os.open with EACCES for the lock: tests may run as root.)"""
    lock = finished_run / rundir.LOCK_FILE
    before = snapshot(finished_run)
    if how == "folder":
        lock.unlink()
        lock.mkdir()
        fragment = f"{lock} is a folder where charlm keeps the run's lock file"
    else:
        lock.chmod(0o444)
        real_open = os.open

        def denied(path, flags, *args, **kwargs):
            if Path(path) == lock and flags & (os.O_RDWR | os.O_WRONLY):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(rundir.os, "open", denied)
        fragment = f"cannot open the run's lock file {lock}: Permission denied; make it writable"
    one_line_error(cli("train", "--out", finished_run, "--resume", "--max-steps", "6"), fragment)
    assert snapshot(finished_run) == before


def test_an_error_in_a_staged_launch_names_the_run_not_the_staging_folder(tmp_path, corpus, monkeypatch):
    """A full disk while the new run's corpus is encoded (was: "cannot write the encoded corpus to
    …/.runN.charlm-new-k3j2/data", a hidden folder that no longer exists when the user reads it)."""
    import charlm.corpus.dataset as dataset

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dataset, "_write_ids", full)
    run = tmp_path / "runN"
    r = cli("train", corpus, "--out", run, *TINY)
    one_line_error(r, f"cannot write the encoded corpus to {run}/data: No space left on device")
    assert "charlm-new" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.txt"]


def test_the_lock_file_says_what_it_is(finished_run):
    first = (finished_run / rundir.LOCK_FILE).read_text().splitlines()[0]
    assert first.startswith("charlm run lock: held by pid ") and "removing this file does not stop" in first
    assert rundir._holder(finished_run / rundir.LOCK_FILE).startswith("PID ")


def test_removing_the_lock_while_training_stops_the_run_at_its_next_save(tmp_path, corpus):
    out = tmp_path / "run"
    steps = []

    def remove_lock_at_step_2() -> bool:
        steps.append(1)
        if len(steps) == 2:
            (out / rundir.LOCK_FILE).unlink()
        return False
    with pytest.raises(RunDirError, match="was removed or replaced while this run trained"):
        train(TrainConfig(corpus=str(corpus), out=str(out), max_steps=6, eval_every=3, sample_length=0,
                          device="cpu", batch_size=4, seq_len=8),
              ModelConfig(hidden_size=8, embedding_size=8), should_stop=remove_lock_at_step_2)
    for name in ("last.pt", "best.pt"):   # nothing saved after the lock went
        assert not (out / name).exists() or load_checkpoint(out / name)["progress"]["step"] < 2


# --- a corpus name that is not UTF-8 ----------------------------------------------------------

def test_a_corpus_whose_name_is_not_utf8_is_refused_before_anything_is_made(tmp_path, corpus):
    bad = Path(os.fsdecode(bytes(tmp_path) + b"/\xff.txt"))
    bad.write_text(corpus.read_text())
    r = cli("train", bad, "--out", tmp_path / "run", *TINY)
    one_line_error(r, "is not valid UTF-8")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".*charlm-new-*"))


def test_runs_says_a_folder_without_a_marker_is_not_a_run(tmp_path, finished_run):
    import json

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "metrics.jsonl").write_text('{"type": "eval", "step": 1, "val_loss": 2.0}\n')
    r = cli("runs", tmp_path, "--json", "-")
    assert r.exit_code == 0, r.output
    rows = {Path(s["run"]).name: s for s in json.loads(r.stdout)["runs"]}
    assert rows["stranger"]["charlm_run"] is False and rows["stranger"]["corpus"] is None
    assert "not a charlm run" in rows["stranger"]["notes"]
    assert rows["runE"]["charlm_run"] is True and rows["runE"]["notes"] is None


# --- the run's logs -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["samples.txt", "metrics.jsonl"])
def test_a_log_that_is_a_folder_is_not_called_a_full_disk(finished_run, name):
    """samples.txt or metrics.jsonl made a folder (was: "… Is a directory (the last checkpoint is
    intact; free some space and continue with --resume)"): the advice fits the cause."""
    log = finished_run / name
    log.unlink(missing_ok=True)
    log.mkdir()
    r = cli("train", "--out", finished_run, "--resume", "--max-steps", "6", "--sample-length", "8")
    one_line_error(r, f"{log} is a folder where charlm keeps a file: move it out of the way and continue with --resume")
    assert "free some space" not in r.stderr


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "free some space"), (errno.EISDIR, "is a folder"),
                                       (errno.EACCES, "make it writable"), (errno.EROFS, "make it writable"),
                                       (errno.EIO, "fix the cause")])
def test_a_log_write_error_advises_by_its_cause(tmp_path, code, fix):
    from charlm.util import run_write_error

    message = run_write_error(tmp_path / "samples.txt", OSError(code, os.strerror(code)))
    assert fix in message and message.endswith("continue with --resume)")
    assert ("free some space" in message) == (code == errno.ENOSPC)


# --- what a SIGKILL at the wrong moment leaves, found by the next launch -----------------------

def test_a_staging_folder_left_by_a_killed_launch_is_removed_by_the_next(tmp_path, corpus):
    """A SIGKILL while a new run is prepared leaves its hidden staging folder (it may hold a whole
    encoded corpus). The next launch of that name removes it: its lock is free. A staging folder
    whose lock a live launch holds is left alone."""
    run = tmp_path / "run"
    stale = tmp_path / ".run.charlm-new-dead"
    (stale / "data").mkdir(parents=True)
    (stale / "data" / "train.bin").write_bytes(b"\0" * 4096)
    rundir.lock_run_dir(stale).release()             # its holder died: the lock file, unlocked
    live = tmp_path / ".run.charlm-new-live"
    live.mkdir()
    held = rundir.lock_run_dir(live)                 # another launch, still preparing
    try:
        r = cli("train", corpus, "--out", run, *TINY)
        assert r.exit_code == 0, r.output
        assert not stale.exists() and live.exists()
        # A replacement holds the run's lock: a staging folder without a lock of its own is
        # a replacement's that was killed, and goes too.
        lockless = tmp_path / ".run.charlm-new-old"
        lockless.mkdir()
        r = cli("train", corpus, "--out", run, *TINY, "--force")
        assert r.exit_code == 0, r.output
        assert not lockless.exists() and live.exists()
    finally:
        held.release()


def test_a_replacement_killed_half_way_is_named_and_force_clears_it(finished_run, corpus):
    """A SIGKILL among --force's renames leaves the earlier run's files in .charlm-old-*: a later
    launch that would keep the folder says so (the user's old run is in there); --force, which
    replaces the folder anyway, removes it."""
    aside = finished_run / ".charlm-old-k3j2"
    aside.mkdir()
    (aside / "last.pt").write_bytes((finished_run / "last.pt").read_bytes())
    before = snapshot(finished_run)
    for extra in (["--resume"], []):
        r = cli("train", corpus, "--out", finished_run, *TINY, *extra)
        one_line_error(r, ".charlm-old-k3j2, the earlier run's files from a --force replacement")
        assert snapshot(finished_run) == before
    r = cli("train", corpus, "--out", finished_run, *TINY, "--force")
    assert r.exit_code == 0, r.output
    assert not aside.exists() and load_checkpoint(finished_run / "last.pt")["progress"]["step"] == 3
