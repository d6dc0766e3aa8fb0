"""Load (slow): a 200 MB corpus trains with flat memory and small checkpoints.

The corpus is built in the test from ../shared/corpora (tiny shakespeare and the Korean chatbot
corpus, repeated: 1,280 distinct characters, so ids are uint16 and the text is 1-3 bytes per
character). The same training runs on a 50 MB and a 200 MB corpus as `python -m charlm train`
subprocesses; the peak resident memory of each (os.wait4's ru_maxrss) must not grow with the
corpus: the text is read in 8 MiB blocks and the ids live in a numpy memmap, never as one Python
str. The checkpoints hold the model, the optimizer and the vocabulary but no corpus, so both runs'
checkpoints are the same small size.

Run with `pytest -m slow tests/test_load.py -s` to see the figures (recorded in docs/reliability.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charlm.checkpoint import load_checkpoint
from helpers import REPO

SHARED = REPO.parent / "shared" / "corpora"
SOURCES = [SHARED / "tinyshakespeare.txt", SHARED / "korean-chatbot.txt"]
MB = 1 << 20
OPTS = ["--model", "lstm", "--hidden-size", "64", "--embedding-size", "32", "--batch-size", "16",
        "--seq-len", "64", "--max-steps", "150", "--eval-every", "75", "--val-fraction", "0.002",
        "--device", "cpu", "--sample-length", "0", "--warmup-steps", "10"]


def build_corpus(path: Path, size: int) -> int:
    chunk = b"".join(p.read_bytes() for p in SOURCES)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            f.write(chunk)
            written += len(chunk)
    return written


def train_and_measure(corpus: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    p = subprocess.Popen([sys.executable, "-m", "charlm", "--quiet", "train", str(corpus), "--out", str(out),
                          *OPTS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(p.pid, 0)   # this child's own peak RSS
    p.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = p.stdout.read().decode(), p.stderr.read().decode()
    assert p.returncode == 0, stderr + stdout
    return {"corpus_mb": corpus.stat().st_size / MB, "peak_rss_mb": usage.ru_maxrss / 1024,
            "wall_s": time.time() - t0, "cpu_s": usage.ru_utime + usage.ru_stime,
            "last_pt_kb": (out / "last.pt").stat().st_size / 1024,
            "best_pt_kb": (out / "best.pt").stat().st_size / 1024,
            "train_bin_mb": (out / "data" / "train.bin").stat().st_size / MB}


@pytest.mark.slow
def test_200mb_corpus_flat_memory_small_checkpoints(tmp_path):
    if not all(p.exists() for p in SOURCES):
        pytest.skip("../shared/corpora is not present")
    results = {}
    for size in (2, 50, 200):   # 2 MB: the baseline (below one read block), reported only
        corpus = tmp_path / f"corpus{size}.txt"
        build_corpus(corpus, size * MB)
        results[size] = train_and_measure(corpus, tmp_path / f"run{size}")
        corpus.unlink()
        print(f"{size} MB corpus:", {k: round(v, 1) for k, v in results[size].items()})
    small, big = results[50], results[200]
    # Flat: four times the text, (almost) the same peak memory, and far less than the text itself.
    assert big["peak_rss_mb"] < small["peak_rss_mb"] + 64, results
    assert big["peak_rss_mb"] < big["corpus_mb"] * 4, results
    # Small checkpoints, with no corpus inside: the same size whatever the corpus size.
    assert big["last_pt_kb"] < 4096 and abs(big["last_pt_kb"] - small["last_pt_kb"]) < 4, results
    ck = load_checkpoint(tmp_path / "run200" / "last.pt")
    assert ck["corpus"]["chars"] > 100_000_000 and set(ck["corpus"]) >= {"sha256", "path"}
    assert ck["progress"]["step"] == 150
