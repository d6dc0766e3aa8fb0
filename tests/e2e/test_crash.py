"""Crash safety: SIGKILL at random instants, a kill in the middle of writing a checkpoint, a full
disk, an unwritable folder, and Ctrl-C / SIGTERM.

The kill test launches `python -m charlm train` as a subprocess, kills it with SIGKILL at a random
instant (start-up, data preparation, training, evaluation, the middle of a save), checks that
every .pt in the run directory loads, and resumes; after the last kill the run is resumed to its
end and must equal the uninterrupted run bit for bit (per-chunk losses and final weights): a crash
costs time, never correctness.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import charlm.checkpoint as checkpoint_mod
import charlm.rundir as rundir_mod
from charlm.checkpoint import load_checkpoint, save_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import CheckpointError, RunDirError
from charlm.metrics import read_metrics
from charlm.training import train
from helpers import REPO, make_text, stop_after

runner = CliRunner()


OPTS = ["--model", "gru", "--hidden-size", "8", "--embedding-size", "8", "--batch-size", "4",
        "--seq-len", "8", "--eval-every", "5", "--warmup-steps", "10", "--sample-length", "0",
        "--device", "cpu", "--seed", "7"]


# One thread in every training process: the reference run in this process uses one too (see
# one_thread), so the results compare bit for bit, and a busy 2-core machine does not slow them.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def charlm_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "charlm", "--quiet", *map(str, args)]


def check_every_checkpoint_loads(run: Path) -> list[int]:
    steps = []
    for path in sorted(run.glob("*.pt")):
        ck = load_checkpoint(path)   # raises on a torn or half-written file
        steps.append(ck["progress"]["step"])
    if (run / "metrics.jsonl").exists():
        read_metrics(run / "metrics.jsonl")   # a torn last line is skipped, never an error
    return steps


def chunk_losses(run: Path):
    return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if r["type"] == "chunk"]


def kill_and_resume(tmp_path: Path, kills: int, max_steps: int, window: tuple[float, float], seed: int):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(4000, seed=3), encoding="utf-8")
    reference = tmp_path / "reference"
    r = runner.invoke(app, ["--quiet", "train", str(corpus), "--out", str(reference),
                            "--max-steps", str(max_steps), *OPTS])
    assert r.exit_code == 0, r.output

    run = tmp_path / "crashed"
    base = charlm_cmd("train", corpus, "--out", run, "--max-steps", max_steps, *OPTS)
    rng = random.Random(seed)
    log = []
    for i in range(kills):
        # No directory yet means the kill came before anything was written: start it again.
        cmd = base + (["--resume"] if run.exists() else [])
        metrics = run / "metrics.jsonl"
        size0 = metrics.stat().st_size if metrics.exists() else 0
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
        # A quarter of the kills land during start-up (imports, data preparation); the others a
        # random instant after this launch has started training (chunks, evaluations, saves),
        # so that a slow, busy machine does not push every kill into the start-up.
        early = rng.random() < 0.25
        delay = rng.uniform(*window) if early else rng.uniform(0.0, 0.8)
        finished = False
        if not early:
            deadline = time.time() + 120
            while p.poll() is None and time.time() < deadline:
                if metrics.exists() and metrics.stat().st_size > size0 + 2000:
                    break
                time.sleep(0.02)
        try:
            p.wait(timeout=delay)
            finished = True
        except subprocess.TimeoutExpired:
            p.kill()                      # SIGKILL: no handler, no cleanup, no flush
            p.wait()
        err = p.stderr.read().decode()
        p.stderr.close()
        assert "Traceback" not in err, err
        steps = check_every_checkpoint_loads(run) if run.exists() else []
        log.append(("start-up" if early else "training", round(delay, 2), finished, steps))
    p = subprocess.run(base + (["--resume"] if run.exists() else []), capture_output=True, text=True,
                       timeout=600, env=ENV)
    assert p.returncode == 0, p.stderr
    check_every_checkpoint_loads(run)
    assert chunk_losses(run) == chunk_losses(reference), log
    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(run / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), (k, log)
    a, b = load_checkpoint(reference / "best.pt"), load_checkpoint(run / "best.pt")
    assert a["progress"]["step"] == b["progress"]["step"], log
    return log


def test_sigkill_at_random_instants_then_resume(tmp_path):
    log = kill_and_resume(tmp_path, kills=3, max_steps=300, window=(0.2, 3.0), seed=11)
    print(log)
    assert any(steps for *_, steps in log), "no kill landed after a checkpoint"


@pytest.mark.slow
def test_sigkill_many_times(tmp_path):
    log = kill_and_resume(tmp_path, kills=24, max_steps=4000, window=(0.2, 4.0), seed=2024)
    print(log)
    assert sum(not finished for _, _, finished, _ in log) >= 20, log


# ----------------------------------------------------------------------------------------------
# A kill in the middle of writing a checkpoint

WRITER = """
import sys, torch
from charlm.checkpoint import save_checkpoint
from pathlib import Path
payload = {"model": {"w": torch.ones(60_000_000)}, "model_config": {}, "tokenizer": {}}
print("writing", flush=True)
while True:
    save_checkpoint(payload, Path(sys.argv[1]))
"""


def test_kill_while_writing_a_checkpoint_leaves_the_old_one(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(3)}, "model_config": {}, "tokenizer": {}}, target)
    before = target.read_bytes()
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, env=ENV)
    assert p.stdout.readline().strip() == b"writing"
    deadline = time.time() + 60
    while not list(tmp_path.glob(".last.pt.*.tmp")):   # the temporary file is being written
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.005)
    p.kill()
    p.wait()
    p.stdout.close()
    assert target.read_bytes() == before              # the old checkpoint is intact
    assert torch.equal(load_checkpoint(target)["model"]["w"], torch.zeros(3))
    assert list(tmp_path.glob(".last.pt.*.tmp"))      # the torn temporary file is left behind...


def test_a_resume_removes_torn_temporary_files(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(2000), encoding="utf-8")
    run = tmp_path / "run"
    cfg = dict(corpus=str(corpus), out=str(run), batch_size=4, seq_len=8, max_steps=4, eval_every=2,
               device="cpu", sample_length=0)
    train(TrainConfig(**cfg), ModelConfig(hidden_size=8, embedding_size=8))
    (run / ".last.pt.abc123.tmp").write_bytes(b"torn")
    train(TrainConfig(**{**cfg, "max_steps": 6, "resume": True}))
    assert not list(run.glob("*.tmp"))                # ...and the next launch removes it


# ----------------------------------------------------------------------------------------------
# Full disk, unwritable folder

def small_payload(value: float) -> dict:
    return {"model": {"w": torch.full((4,), value)}, "model_config": {}, "tokenizer": {}}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_really_full_disk(tmp_path, monkeypatch):
    """/dev/full answers every write with ENOSPC: the real error, not a simulation of it."""
    target = tmp_path / "last.pt"
    save_checkpoint(small_payload(1.0), target)
    before = target.read_bytes()
    real_mkstemp = checkpoint_mod.tempfile.mkstemp

    def mkstemp_on_a_full_disk(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name
    monkeypatch.setattr(checkpoint_mod.tempfile, "mkstemp", mkstemp_on_a_full_disk)
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint is unchanged"):
        save_checkpoint(small_payload(2.0), target)
    assert target.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("where,err", [
    ("mkstemp", errno.EACCES),     # an unwritable folder: the temporary file cannot be created
    ("replace", errno.EROFS),      # the folder became read-only between write and rename
    ("write", errno.ENOSPC),       # the disk filled up while writing
])
def test_save_failures_leave_the_previous_checkpoint(tmp_path, monkeypatch, where, err):
    target = tmp_path / "last.pt"
    save_checkpoint(small_payload(1.0), target)
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err))
    if where == "mkstemp":
        monkeypatch.setattr(checkpoint_mod.tempfile, "mkstemp", fail)
    elif where == "replace":
        monkeypatch.setattr(checkpoint_mod.os, "replace", fail)
    else:
        monkeypatch.setattr(checkpoint_mod.os, "fsync", fail)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(small_payload(2.0), target)
    assert os.strerror(err) in str(info.value) and "previous checkpoint is unchanged" in str(info.value)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_disk_full_during_training_stops_cleanly_and_resumes(tmp_path, monkeypatch):
    """The save at an evaluation fails: one clear line, exit 1, last.pt still the previous one,
    and once there is room again the run resumes from it."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(2000), encoding="utf-8")
    run = tmp_path / "run"
    args = ["--quiet", "train", str(corpus), "--out", str(run), "--max-steps", "12", "--eval-every", "4",
            "--hidden-size", "8", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "8",
            "--device", "cpu", "--sample-length", "0"]
    real_replace = checkpoint_mod.os.replace
    calls = {"n": 0}

    def replace_until_full(src, dst):
        calls["n"] += str(dst).endswith(".pt")
        if calls["n"] > 3:   # step 0 last.pt, step 4 best.pt and last.pt fit; then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)
    monkeypatch.setattr(checkpoint_mod.os, "replace", replace_until_full)
    r = runner.invoke(app, args)
    monkeypatch.undo()
    assert r.exit_code == 1, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in r.output
    assert "No space left on device" in err and "previous checkpoint is unchanged" in err
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 4
    assert not list(run.glob("*.tmp"))
    r = runner.invoke(app, args + ["--resume"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 12


def test_unwritable_run_directory(tmp_path, monkeypatch):
    real_write = Path.write_bytes

    def refuse(self, data):
        if self.name == ".write-test":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_write(self, data)
    monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(RunDirError, match="cannot write to run directory .*Permission denied"):
        rundir_mod.stage(rundir_mod.open_run_dir(tmp_path / "run", "new", None))


# ----------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM

def start_long_run(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(20000), encoding="utf-8")
    run = tmp_path / "run"
    p = subprocess.Popen(charlm_cmd("train", corpus, "--out", run, "--max-steps", 1_000_000,
                                    "--eval-every", "50", "--hidden-size", "8", "--embedding-size", "8",
                                    "--batch-size", "4", "--seq-len", "8", "--device", "cpu",
                                    "--sample-length", "0"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while True:   # wait until it is training (a few chunks in metrics.jsonl)
        assert p.poll() is None, p.stderr.read()
        assert time.time() < deadline
        m = run / "metrics.jsonl"
        if m.exists() and m.stat().st_size > 0 and b'"chunk"' in m.read_bytes():
            break
        time.sleep(0.1)
    time.sleep(0.5)
    return p, run


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_signal_saves_and_exits_quickly(tmp_path, sig, code):
    p, run = start_long_run(tmp_path)
    t0 = time.time()
    p.send_signal(sig)
    rc = p.wait(timeout=30)
    took = time.time() - t0
    err = p.stderr.read()
    p.stderr.close()
    assert rc == code, err
    assert took < 5.0, f"took {took:.1f}s to exit"
    assert "Traceback" not in err and "saved" in err and "--resume" in err, err
    ck = load_checkpoint(run / "last.pt")
    assert ck["progress"]["step"] > 0
    finish = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "finish"]
    assert finish and finish[-1]["reason"] == "interrupted"
    # ...and the run continues from there exactly: 3 more steps (same budget, so the same lr
    # schedule) equal an uninterrupted run of the same options stopped at the same step.
    stopped = ck["progress"]["step"]
    cfg = dict(corpus=str(tmp_path / "c.txt"), max_steps=1_000_000, eval_every=50, batch_size=4,
               seq_len=8, device="cpu", sample_length=0)
    train(TrainConfig(**cfg, out=str(run), resume=True), None, should_stop=stop_after(3))
    reference = tmp_path / "reference"
    train(TrainConfig(**cfg, out=str(reference)), ModelConfig(hidden_size=8, embedding_size=8),
          should_stop=stop_after(stopped + 3))
    assert chunk_losses(run) == chunk_losses(reference)
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
    assert a["progress"]["step"] == b["progress"]["step"] == stopped + 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_second_ctrl_c_exits_at_once(tmp_path):
    p, run = start_long_run(tmp_path)
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=30)
    p.stderr.close()
    assert rc == 130
    check_every_checkpoint_loads(run)


def test_ctrl_c_while_preparing_a_large_corpus_stops_at_once(tmp_path):
    """Before the first checkpoint there is nothing to save: Ctrl-C during data preparation (which
    takes a while on a large corpus) exits at once, and the same command starts it again."""
    shakespeare = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"
    if not shakespeare.exists():
        pytest.skip("../shared/corpora is not present")
    corpus = tmp_path / "big.txt"
    corpus.write_bytes(shakespeare.read_bytes() * 20)     # 22 MB: seconds of scanning and encoding
    run = tmp_path / "run"
    cmd = charlm_cmd("train", corpus, "--out", run, "--max-steps", 3, "--hidden-size", "8",
                     "--embedding-size", "8", "--device", "cpu", "--sample-length", "0")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    # The run is prepared in a hidden sibling folder and only moved into place once it is ready.
    while not list(tmp_path.glob(".run.charlm-new-*/data")):    # the encoding has begun
        assert p.poll() is None and time.time() < deadline, p.stderr.read()
        time.sleep(0.01)
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=60)
    took = time.time() - t0
    err = p.stderr.read()
    p.stderr.close()
    assert rc == 130 and "Traceback" not in err, (rc, err)
    assert took < 5.0, f"took {took:.1f}s"
    assert not run.exists(), "the signal came after training had started"
    assert not list(tmp_path.glob(".run.charlm-new-*")), "the staging folder was left behind"
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert p.returncode == 0, p.stderr
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 3
