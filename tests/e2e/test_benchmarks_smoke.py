"""The benchmark scripts run end to end in their --quick mode: they print their figure against a
reference from the same run and append one JSON line (to a temp file, not benchmarks/results.jsonl).
The figures themselves are not checked here: timings belong to benchmarks/, never to tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

CORPORA = REPO.parent / "shared" / "corpora"


def run_quick(script: str, tmp_path: Path) -> tuple[str, dict]:
    results = tmp_path / "results.jsonl"
    env = {**os.environ, "CHARLM_BENCH_RESULTS": str(results)}
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = results.read_text().splitlines()
    assert len(lines) >= 1
    return p.stdout, json.loads(lines[-1])


@pytest.mark.skipif(not (CORPORA / "tinyshakespeare.txt").exists(), reason="needs ../shared/corpora")
def test_sampling_speed_quick(tmp_path):
    out, rec = run_quick("sampling_speed.py", tmp_path)
    assert "charlm sampling:" in out and "ratio" in out and "N=  4" in out
    assert rec["benchmark"] == "sampling" and rec["chars_per_s"] > 0 and rec["reference_chars_per_s_1thread"] > 0
    assert set(rec["batch_chars_per_s"]) == {"1", "4"}


@pytest.mark.skipif(not (CORPORA / "tinyshakespeare.txt").exists(), reason="needs ../shared/corpora")
def test_throughput_quick(tmp_path):
    """The whole training loop against the reference loop (it once imported a display module
    that had moved, and nothing ran it)."""
    out, rec = run_quick("throughput.py", tmp_path)
    assert "charlm" in out and "reference loop" in out and "ratio" in out
    assert rec["benchmark"] == "throughput"


@pytest.mark.skipif(not (CORPORA / "korean-chatbot.txt").exists(), reason="needs ../shared/corpora")
def test_tokenize_speed_quick(tmp_path):
    out, rec = run_quick("tokenize_speed.py", tmp_path)
    assert "charlm tokenising" in out and "ratio" in out
    assert rec["benchmark"] == "tokenize" and rec["mb_per_s"] > 0 and rec["reference_mb_per_s"] > 0
    assert rec["peak_rss_mb"] > 0 and rec["id_bytes"] == 2  # Hangul: more than 256 ids


def test_startup_quick(tmp_path):
    out, rec = run_quick("startup.py", tmp_path)
    assert "charlm --help:" in out and "ratio" in out
    assert rec["benchmark"] == "startup" and rec["seconds"] > 0 and rec["reference_seconds"] > 0
    assert rec["commands_importing_torch"] == []  # --help never imports torch


def test_precision_step_quick(tmp_path):
    out, rec = run_quick("precision_step.py", tmp_path)
    assert rec["benchmark"] == "precision_step"
    if rec["bf16_available"]:
        assert "speed-up" in out and rec["fp32_ms"] > 0 and rec["bf16_ms"] > 0
    else:
        assert "no native bf16" in out


@pytest.mark.skipif(not (CORPORA / "tinyshakespeare.txt").exists(), reason="needs ../shared/corpora")
def test_quality_runs_end_to_end(tmp_path):
    """A few seconds of a tiny model: the train -> evaluate -> report path of benchmarks/quality.py
    (its evaluate call once broke on a CLI change with nothing to notice it)."""
    results = tmp_path / "results.jsonl"
    env = {**os.environ, "CHARLM_BENCH_RESULTS": str(results)}
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quality.py"), "--seconds", "3", "--no-reference",
                        "--out", str(tmp_path / "run"), "--", "--hidden-size", "32", "--eval-tokens", "2048"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads(results.read_text().splitlines()[-1])
    assert rec["benchmark"] == "quality" and 0 < rec["charlm_loss"] < 5 and rec["steps"] > 0
    assert f"{rec['charlm_loss']:.4f} nats/char" in p.stdout and "--hidden-size 32" in p.stdout


def test_gru_speed_quick(tmp_path):
    out, rec = run_quick("gru_speed.py", tmp_path)
    assert "torch nn.GRU" in out and "charlm cpugru" in out and "ratio" in out
    assert rec["benchmark"] == "gru_speed" and rec["tok_s"] > 0 and rec["reference_tok_s"] > 0
    assert rec["quick"] is True


@pytest.mark.skipif(not (CORPORA / "tinyshakespeare.txt").exists(), reason="needs ../shared/corpora")
def test_threads_contention_quick(tmp_path):
    out, rec = run_quick("threads_contention.py", tmp_path)
    assert "--threads auto" in out and "load" in out
    assert rec["benchmark"] == "threads_contention" and set(rec["tokens_per_s"]) == {"0", "1"}
    rates = [r for row in rec["tokens_per_s"].values() for r in row.values()]
    assert all(r is None or r > 0 for r in rates) and any(r is not None for r in rates)   # None: too few steps
    assert any("threads auto" in " ".join(m) for m in rec["auto_notices"].values())


def test_transformer_step_quick(tmp_path):
    out, rec = run_quick("transformer_step.py", tmp_path)
    assert "plain loop" in out and "charlm" in out and "ratio" in out and "memory 8" in out
    assert rec["benchmark"] == "transformer_step" and rec["tok_s"] > 0 and rec["reference_tok_s"] > 0


@pytest.mark.skipif(not (CORPORA / "tinyshakespeare.txt").exists(), reason="needs ../shared/corpora")
def test_systems_quick(tmp_path):
    """Every system trains, evaluates and is inspected by the commands a user runs (tiny, seconds)."""
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "systems.py"), "--quick",
                        "--systems", "rnn,transformer+memory", "--keep", str(tmp_path / "runs")], cwd=REPO,
                       env={**os.environ, "CHARLM_BENCH_RESULTS": str(tmp_path / "r.jsonl")},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["system"], r["budget"]) for r in records] == [
        ("rnn", "time"), ("rnn", "tokens"), ("transformer+memory", "time"), ("transformer+memory", "tokens")]
    assert all(r["val_nats_per_char"] > 0 and r["parameters"] > 0 for r in records)
    assert "| transformer+memory | equal tokens |" in p.stdout


@pytest.mark.skipif(not (CORPORA / "tinyshakespeare.txt").exists(), reason="needs ../shared/corpora")
def test_ngram_speed_quick(tmp_path):
    out, rec = run_quick("ngram_speed.py", tmp_path)
    assert "charlm KneserNey" in out and "collections.Counter" in out
    assert rec["benchmark"] == "ngram_speed" and rec["train_seconds"] > 0 and rec["reference_seconds"] > 0
