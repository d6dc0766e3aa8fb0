"""Run directories (issue 14 §1, §2): validate before any destructive step, delete only what
charlm wrote, a run is a run by its marker, a resume refuses another run's checkpoint, one writer
per run (a real second process holds the lock), and a damaged last.pt gives one line."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import charlm
import charlm.rundir as rundir
from charlm.checkpoint import load_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import RunDirError
from charlm.metrics import read_metrics
from charlm.training import train
from charlm.util import RUN_MARKER
from helpers import REPO, make_text

runner = CliRunner()
TINY = ["--hidden-size", "8", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "8",
        "--max-steps", "3", "--eval-every", "3", "--sample-length", "0", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": str(REPO)}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args) -> "object":
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(r, fragment: str) -> None:
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit))
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert fragment in " ".join(err.split()), err


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "good.txt"
    path.write_text(make_text(3000), encoding="utf-8")
    return path


@pytest.fixture
def finished_run(tmp_path: Path, corpus: Path) -> Path:
    run = tmp_path / "runE"
    r = cli("train", corpus, "--out", run, *TINY)
    assert r.exit_code == 0, r.output
    return run


# --- validate, then act ---------------------------------------------------------------------

@pytest.mark.parametrize("case", ["typo", "seq-len", "not-utf8"])
def test_force_with_a_mistake_leaves_the_run_untouched(tmp_path, corpus, finished_run, case):
    (finished_run / "notes.txt").write_text("mine", encoding="utf-8")
    before = snapshot(finished_run)
    if case == "typo":
        args = [tmp_path / "typo.txt", "--out", finished_run, "--force", *TINY]
        fragment = "does not exist"
    elif case == "seq-len":
        args = [corpus, "--out", finished_run, "--force", *TINY, "--seq-len", "100000"]
        fragment = "too few"
    else:
        bad = tmp_path / "latin1.txt"
        bad.write_bytes("caf\xe9 ".encode("latin-1") * 500)
        args = [bad, "--out", finished_run, "--force", *TINY]
        fragment = "UTF-8"
    r = cli("train", *args)
    one_line_error(r, fragment)
    assert snapshot(finished_run) == before
    assert not list(tmp_path.glob(".runE.charlm-new-*")), "staging folder left behind"


def test_force_deletes_only_what_charlm_wrote(tmp_path, finished_run):
    inside = finished_run / "corpus.txt"              # the corpus lives in the run folder
    inside.write_text(make_text(3000, seed=3), encoding="utf-8")
    (finished_run / "notes.txt").write_text("mine", encoding="utf-8")
    (finished_run / "data" / "mine.csv").write_text("1,2", encoding="utf-8")
    old_id = rundir.read_marker(finished_run)["run_id"]
    r = cli("train", inside, "--out", finished_run, "--force", *TINY)
    assert r.exit_code == 0, r.output
    assert (finished_run / "notes.txt").read_text() == "mine"
    assert inside.is_file() and (finished_run / "data" / "mine.csv").is_file()
    new_id = rundir.read_marker(finished_run)["run_id"]
    assert new_id != old_id and load_checkpoint(finished_run / "last.pt")["run_id"] == new_id
    finishes = [m for m in read_metrics(finished_run / "metrics.jsonl") if m["type"] == "finish"]
    assert len(finishes) == 1


@pytest.mark.parametrize("own", ["metrics.jsonl", "data/meta.json", ".x.tmp"])
def test_a_folder_of_user_files_is_not_an_unstarted_run(tmp_path, corpus, own):
    folder = tmp_path / "exp"
    (folder / own).parent.mkdir(parents=True, exist_ok=True)
    (folder / own).write_text('{"mine": 1}\n', encoding="utf-8")
    before = snapshot(folder)
    one_line_error(cli("train", corpus, "--out", folder, *TINY), "already exists")
    one_line_error(cli("train", corpus, "--out", folder, "--force", *TINY), "refusing to delete it")
    assert snapshot(folder) == before


def test_a_missing_corpus_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(cli("train", "missing.txt", *TINY), "does not exist")
    one_line_error(cli("train", "missing.txt", "--out", "r", *TINY), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_size_on_a_default_run_leaves_no_folder(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(cli("train", corpus, *TINY, "--seq-len", "100000"), "too few")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.txt"]


def test_default_names_started_in_the_same_second_do_not_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt, *a: "20260101-000000")
    plans = [rundir.open_run_dir(None, "new", None) for _ in range(2)]
    for plan in plans:                 # both staged before either is committed, as in a race
        rundir.stage(plan)
    made = [rundir.commit(plan) for plan in plans]
    for plan in plans:
        plan.release()
    assert [p.name for p in made] == ["20260101-000000", "20260101-000000-2"]


def test_a_non_utf8_out_name_is_refused_before_anything_is_made(tmp_path, corpus):
    out = str(tmp_path / "run\udcff")    # how Python spells a non-UTF-8 file name byte
    with pytest.raises(RunDirError, match="not valid UTF-8"):
        train(TrainConfig(corpus=str(corpus), out=out, max_steps=2, sample_length=0, device="cpu"),
              ModelConfig(hidden_size=8, embedding_size=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.txt"]


def test_force_through_a_symlink_is_refused(tmp_path, corpus, finished_run):
    link = tmp_path / "link"
    link.symlink_to(finished_run)
    before = snapshot(finished_run)
    one_line_error(cli("train", corpus, "--out", link, "--force", *TINY), "symbolic link")
    assert snapshot(finished_run) == before and link.is_symlink()


def test_permission_denied_on_train_and_resume(tmp_path, corpus, finished_run, monkeypatch):
    real_open = os.open

    def refuse(path, *a, **k):
        if str(path).endswith(rundir.LOCK_FILE):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(rundir.os, "open", refuse)
    one_line_error(cli("train", "--out", finished_run, "--resume"), "Permission denied")
    one_line_error(cli("train", corpus, "--out", tmp_path / "new", *TINY), "Permission denied")
    assert not (tmp_path / "new").exists()


# --- run identity on resume -----------------------------------------------------------------

def test_a_last_pt_from_another_run_is_refused(tmp_path, corpus, finished_run):
    other = tmp_path / "other"
    assert cli("train", corpus, "--out", other, *TINY, "--seed", "7").exit_code == 0
    shutil.copy(other / "last.pt", finished_run / "last.pt")
    best, metrics = (finished_run / "best.pt").read_bytes(), (finished_run / "metrics.jsonl").read_bytes()
    one_line_error(cli("train", "--out", finished_run, "--resume", "--max-steps", "6"), "belongs to another run")
    assert (finished_run / "best.pt").read_bytes() == best
    assert (finished_run / "metrics.jsonl").read_bytes() == metrics


def test_an_old_run_without_a_marker_is_adopted_on_resume(tmp_path, finished_run):
    ckpt = load_checkpoint(finished_run / "last.pt")
    del ckpt["run_id"]                          # as charlm wrote it before run ids
    torch.save(ckpt, finished_run / "last.pt")
    (finished_run / RUN_MARKER).unlink()
    assert rundir.is_run_dir(finished_run)      # its charlm config.toml says so
    r = cli("train", "--out", finished_run, "--resume", "--max-steps", "6")
    assert r.exit_code == 0, r.output
    marker = rundir.read_marker(finished_run)
    assert marker is not None and load_checkpoint(finished_run / "last.pt")["run_id"] == marker["run_id"]


def test_a_zero_step_run_reports_no_best(tmp_path, corpus):
    run = train(TrainConfig(corpus=str(corpus), out=str(tmp_path / "z"), max_steps=5, sample_length=0,
                            device="cpu", batch_size=4, seq_len=8),
                ModelConfig(hidden_size=8, embedding_size=8), should_stop=lambda: True)
    finish = [m for m in read_metrics(run / "metrics.jsonl") if m["type"] == "finish"][0]
    assert finish["step"] == 0 and finish["best_val_loss"] is None
    assert (run / "last.pt").is_file() and not (run / "best.pt").exists()
    assert charlm.load(run, device="cpu").sample(length=5, seed=1) is not None   # falls back to last.pt


# --- one writer per run ---------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from charlm.rundir import lock_run_dir
lock = lock_run_dir(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path, corpus, finished_run):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(finished_run)], stdout=subprocess.PIPE,
                              text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(finished_run)
        for args in (["--out", finished_run, "--resume", "--max-steps", "6"],
                     [corpus, "--out", finished_run, "--force", *TINY]):
            r = cli("train", *args)
            one_line_error(r, f"in use by a charlm process (PID {holder.pid} on ")
        assert snapshot(finished_run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = cli("train", "--out", finished_run, "--resume", "--max-steps", "6")   # no stale lock
    assert r.exit_code == 0, r.output


def test_two_launches_into_one_new_folder(tmp_path, corpus):
    """Two real `charlm train --out cc` at once: one trains, the other is refused."""
    cc = tmp_path / "cc"
    cmd = [sys.executable, "-m", "charlm", "--quiet", "train", str(corpus), "--out", str(cc), *TINY,
           "--max-steps", "40", "--eval-every", "20"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)]
    time.sleep(0.5)
    procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV))
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 1], results
    err = next(e for rc, e in results if rc == 1)
    assert "in use by a charlm process" in err or "already exists" in err, err
    assert "Traceback" not in err
    finishes = [m for m in read_metrics(cc / "metrics.jsonl") if m["type"] == "finish"]
    assert len(finishes) == 1


# --- a damaged metrics.jsonl disk, a hand-edited last.pt ------------------------------------

def test_disk_full_while_appending_metrics(tmp_path, corpus, monkeypatch):
    from charlm import metrics as metrics_mod

    real = metrics_mod.MetricsLog.write
    calls = {"n": 0}

    def full(self, event):
        calls["n"] += 1
        if calls["n"] > 5:
            raise_full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            try:
                raise raise_full
            except OSError as e:
                raise self._error(e) from None
        return real(self, event)
    monkeypatch.setattr(metrics_mod.MetricsLog, "write", full)
    r = cli("train", corpus, "--out", tmp_path / "full", *TINY, "--max-steps", "20")
    one_line_error(r, "No space left on device")
    assert (tmp_path / "full" / "last.pt").is_file()


def _damage(ckpt: dict, case: str) -> None:
    kind, _, key = case.partition(":")
    if kind == "drop-progress":
        del ckpt["progress"][key]
    elif kind == "retype-progress":
        ckpt["progress"][key] = "x"
    elif kind == "drop":
        del ckpt[key]
    elif case == "hidden-shape":
        ckpt["hidden_state"] = [[torch.zeros(1, 2, 3)]]
    elif case == "hidden-empty":
        ckpt["hidden_state"] = []
    elif case == "rng-retyped":
        ckpt["rng"] = [{"torch": "seed"}]
    elif case == "optimizer-garbage":
        ckpt["optimizer"] = {"state": 5, "param_groups": "x"}
    elif case == "model-config-retyped":
        ckpt["model_config"]["hidden_size"] = "big"
    elif case == "corpus-no-path":
        ckpt["corpus"] = {"name": "x"}
    elif case == "progress-not-a-dict":
        ckpt["progress"] = [1, 2]


DAMAGE = (["drop-progress:" + k for k in ("step", "epoch", "step_in_epoch", "tokens_seen", "elapsed",
                                          "best_val_loss", "metrics_offset")]
          + ["retype-progress:" + k for k in ("step", "best_val_loss", "since_eval", "lr_scale")]
          + ["drop:" + k for k in ("hidden_state", "rng", "optimizer", "train_config", "corpus")]
          + ["hidden-shape", "hidden-empty", "rng-retyped", "optimizer-garbage", "model-config-retyped",
             "corpus-no-path", "progress-not-a-dict"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("trained")
    corpus = tmp / "c.txt"
    corpus.write_text(make_text(3000), encoding="utf-8")
    r = cli("train", corpus, "--out", tmp / "run", *TINY)
    assert r.exit_code == 0, r.output
    return tmp / "run"


@pytest.mark.parametrize("case", DAMAGE)
def test_a_hand_edited_last_pt_gives_one_line(tmp_path, trained, case):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    ckpt = load_checkpoint(run / "last.pt")
    _damage(ckpt, case)
    torch.save(ckpt, run / "last.pt")
    r = cli("train", "--out", run, "--resume", "--max-steps", "6")
    assert r.exit_code == 1, (case, r.output)
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), \
        (case, repr(r.exception))
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), (case, err)
