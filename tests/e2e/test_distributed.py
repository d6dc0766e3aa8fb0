"""DDP on CPU: two gloo processes launched by torchrun, as a user would launch them.

One uninterrupted 2-process run is shared by the tests (module fixture); the resume test and the
elastic-restart test compare against it bit for bit. The learning rate is constant
(--min-lr-ratio 1, no warm-up) so a run stopped by --max-steps and resumed with a larger one
follows exactly the uninterrupted run's schedule. Dropout is on, so each rank's RNG state has
to survive the checkpoint too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import make_text

from charlm.checkpoint import load_checkpoint

TOTAL = 24
ARGS = ["--model", "lstm", "--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4",
        "--seq-len", "16", "--eval-every", "8", "--sample-length", "0", "--warmup-steps", "0",
        "--min-lr-ratio", "1", "--dropout", "0.1", "--device", "cpu", "--seed", "5"]


def torchrun(corpus: Path, out: Path, max_steps: int, *extra: str, nproc: int = 2,
             timeout: float = 180, quiet: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "charlm", *(["-q"] if quiet else []), "train", str(corpus), "--out", str(out), "--max-steps", str(max_steps),
           *ARGS, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == kind]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "corpus.txt"
    path.write_text(make_text(9000, seed=1), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def full_run(corpus: Path) -> tuple[Path, subprocess.CompletedProcess]:
    out = corpus.parent / "full"
    proc = torchrun(corpus, out, TOTAL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def test_two_ranks_keep_identical_weights_and_learn(full_run):
    run, _ = full_run
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(run / name)
        assert ckpt["world_size"] == 2
        digests = ckpt["replica_digests"]
        assert len(digests) == 2 and digests[0] == digests[1], "the replicas' weights differ"
    last = load_checkpoint(run / "last.pt")
    assert last["progress"]["step"] == TOTAL
    # Each rank carries its own streams' hidden state, and its own RNG (its own dropout masks).
    (h0, c0), (h1, c1) = last["hidden_state"]
    assert h0.shape == h1.shape == (1, 4, 16)
    assert not torch.equal(h0, h1)
    assert not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])
    # The loss falls (the chunk loss is the mean over both ranks' streams).
    losses = [r["loss"] for r in records(run, "chunk")]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2
    evals = records(run, "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]


def test_only_rank_zero_writes(full_run):
    run, proc = full_run
    assert sorted(p.name for p in run.iterdir()) == [".charlm-lock", ".charlm-run", "best.pt", "config.toml",
                                                     "data", "last.pt", "metrics.jsonl", "samples.txt"]
    assert not list(run.glob(".*.tmp")), "a temporary file was left behind"
    # Two writers would double (or interleave) every record.
    steps = [r["step"] for r in records(run, "chunk")]
    assert steps == list(range(1, TOTAL + 1))
    assert len(records(run, "start")) == 1
    start = records(run, "start")[0]
    assert start["world_size"] == 2
    # Only rank 0 drives the display: one summary line, not two.
    assert proc.stdout.count("done (max_steps)") == 1, proc.stdout


def test_the_closing_sample_is_printed_once(corpus, tmp_path):
    # The later --sample-length overrides ARGS' 0; not quiet, so the closing sample is shown.
    proc = torchrun(corpus, tmp_path / "run", 4, "--sample-length", "40", quiet=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("sample (temperature 0.8") == 1, proc.stdout


def test_two_process_resume_is_exact(corpus, full_run, tmp_path):
    full, _ = full_run
    out = tmp_path / "resumed"
    first = torchrun(corpus, out, TOTAL // 2)
    assert first.returncode == 0, first.stderr
    assert load_checkpoint(out / "last.pt")["progress"]["step"] == TOTAL // 2
    second = torchrun(corpus, out, TOTAL, "--resume")
    assert second.returncode == 0, second.stderr

    def chunk_losses(run):
        return [(r["step"], r["loss"], r["grad_norm"]) for r in records(run, "chunk")]

    got, want = chunk_losses(out), chunk_losses(full)
    differ = [(g, w) for g, w in zip(got, want) if g != w]
    assert len(got) == len(want) == TOTAL and not differ, differ[:3]
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(full / "last.pt")
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for (x, y) in zip(a["hidden_state"], b["hidden_state"]):
        assert all(torch.equal(s, t) for s, t in zip(x, y))


def test_time_budget_and_grad_reports_keep_ranks_in_step(corpus, tmp_path):
    """--max-time: each rank has its own clock, yet all must stop at the same step and use the
    same (time-dependent) learning rate; --grad-report-every runs on rank 0 between collectives."""
    out = tmp_path / "timed"
    cmd_extra = ["--max-time", "2", "--grad-report-every", "7", "--min-lr-ratio", "0.1"]
    proc = torchrun(corpus, out, 10**6, *cmd_extra)
    assert proc.returncode == 0, proc.stderr
    ck = load_checkpoint(out / "last.pt")
    assert ck["replica_digests"][0] == ck["replica_digests"][1]
    assert records(out, "finish")[0]["reason"] == "max_time"
    lrs = [r["lr"] for r in records(out, "chunk")]
    assert lrs[-1] < lrs[0]                       # the schedule followed the clock
    assert records(out, "grad_report")


def test_resume_under_another_world_size_is_refused(full_run, tmp_path):
    import shutil

    from charlm.errors import ConfigError
    from charlm.training import plan_launch

    full, _ = full_run
    copy = tmp_path / "copy"
    shutil.copytree(full, copy)
    # Refused when the launch is decided, before any process group or device is set up.
    with pytest.raises(ConfigError, match=r"trained with 2 processes.*same --nproc_per_node"):
        plan_launch({"out": str(copy), "resume": True, "max_steps": TOTAL + 4, "device": "cpu"})   # one process here
    assert load_checkpoint(copy / "last.pt")["progress"]["step"] == TOTAL   # untouched


TRANSFORMER = ["--model", "transformer", "--hidden-size", "16", "--heads", "2", "--layers", "1",
               "--memory", "8", "--lr", "1e-2"]


def test_a_transformer_with_memory_keeps_ranks_identical_and_resumes_exactly(corpus, tmp_path):
    """The memory is the transformer's carried state: each rank carries its own streams' keys and
    values, the replicas' weights stay identical, and a 2-process resume equals the
    uninterrupted run bit for bit."""
    full, part = tmp_path / "full", tmp_path / "part"
    for out, steps, extra in ((full, 16, ()), (part, 8, ()), (part, 16, ("--resume",))):
        proc = torchrun(corpus, out, steps, *TRANSFORMER, *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = load_checkpoint(part / "last.pt"), load_checkpoint(full / "last.pt")
    assert b["model_config"]["cell"] == "transformer" and b["model_config"]["memory"] == 8
    assert b["replica_digests"][0] == b["replica_digests"][1]
    (k0, v0, _), (k1, v1, _) = b["hidden_state"]
    assert k0.shape == k1.shape and not torch.equal(k0, k1)       # each rank's own memory
    losses = [[(r["step"], r["loss"]) for r in records(run, "chunk")] for run in (part, full)]
    assert losses[0] == losses[1] and len(losses[0]) == 16
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for x, y in zip(a["hidden_state"], b["hidden_state"]):
        assert all(torch.equal(s, t) for s, t in zip(x, y))


def test_a_removed_lock_stops_every_rank_with_the_same_message(corpus, tmp_path):
    """The lock is rank 0's; when its file is removed mid-run every rank stops at the next save
    with one message (a rank left training alone would wait in its next all-reduce)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "charlm", "-q", "train", str(corpus), "--out", str(out), "--max-steps", "100000",
           *ARGS, "--eval-every", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (out / "last.pt").exists(), launcher.communicate()[1]
    (out / ".charlm-lock").unlink()
    removed = time.time()
    _, stderr = launcher.communicate(timeout=180)
    assert launcher.returncode != 0
    stopped = [line for line in stderr.splitlines() if "was removed or replaced while this run trained" in line]
    assert len(stopped) == 1, stderr    # said once, by rank 0
    # Rank 1 raised it too and exited 1 on its own, at once (alone, it waited in its next
    # all-reduce until torchrun gave up on it, over 2 minutes here).
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s*\n\s*exitcode\s*: 1 ", stderr), stderr
    assert time.time() - removed < 60


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the workers")
def test_elastic_restart_resumes_from_last_checkpoint(corpus, tmp_path):
    """Kill one worker mid-run: torchrun (--max-restarts 1) restarts the group, which resumes
    from last.pt on its own, and the run ends exactly where an uninterrupted one does."""
    steps, every = 400, 20
    args = ["--eval-every", str(every), "--hidden-size", "96"]
    ref = tmp_path / "ref"
    proc = torchrun(corpus, ref, steps, *args, timeout=600)
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "elastic"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--max-restarts=1", "-m", "charlm", "-q", "train", str(corpus), "--out", str(out),
           "--max-steps", str(steps), *ARGS, *args, "--force"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed = False
    deadline = time.time() + 300
    while launcher.poll() is None and time.time() < deadline and not killed:
        saved = [r for r in records(out, "checkpoint")] if (out / "metrics.jsonl").exists() else []
        if any(r["step"] >= 2 * every for r in saved):
            workers = _children(launcher.pid)
            if len(workers) == 2:
                os.kill(max(workers), signal.SIGKILL)   # one worker dies without warning
                killed = True
        time.sleep(0.02)
    stdout, stderr = launcher.communicate(timeout=300)
    if not killed:
        pytest.skip("the run finished before a worker could be killed (machine too fast)")
    assert launcher.returncode == 0, stderr
    notices = [r["message"] for r in records(out, "notice")]
    assert any("torchrun restart 1" in m for m in notices), notices
    steps_seen = [r["step"] for r in records(out, "chunk")]
    assert steps_seen == list(range(1, steps + 1))   # metrics rewound to the checkpoint
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(ref / "last.pt")
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
