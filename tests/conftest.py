"""Shared fixtures: tiny corpora and tiny training options, so every test runs in seconds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_CORPORA = REPO.parent / "shared" / "corpora"

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run best on one thread: a second OpenMP thread only adds waiting, badly so on a
    2-core machine shared with other work. Tests that compare runs bit for bit do so at equal
    thread counts (subprocesses they start get their own setting)."""
    import charlm.threads

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    charlm.threads._pinned = None   # a command's --threads N pins it for its process: not for the next test


# A tiny model: enough to see the loss fall, small enough to train in a second or two.
TINY = ["--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "10", "--sample-length", "0", "--warmup-steps", "0"]


def make_text(n_chars: int = 6000, seed: int = 0) -> str:
    """Readable, repetitive English-like text: a small model learns it quickly."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "house"]
    lines = []
    total = 0
    while total < n_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + ".\n"
        lines.append(line)
        total += len(line)
    return "".join(lines)[:n_chars]


def stop_after(n: int):
    """A should_stop hook for charlm.training.train: stop once n steps have been trained in this launch."""
    calls = {"n": -1}

    def hook() -> bool:
        calls["n"] += 1
        return calls["n"] >= n
    return hook


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture
def shakespeare() -> Path:
    path = SHARED_CORPORA / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip("../shared/corpora/tinyshakespeare.txt is not present")
    return path


@pytest.fixture
def korean() -> Path:
    path = SHARED_CORPORA / "korean-chatbot.txt"
    if not path.exists():
        pytest.skip("../shared/corpora/korean-chatbot.txt is not present")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny trained run on disk (5 steps of a 16-unit GRU), shared by tests that only read it."""
    import charlm

    tmp = tmp_path_factory.mktemp("tiny-run")
    corpus = tmp / "corpus.txt"
    corpus.write_text(make_text(3000), encoding="utf-8")
    cfg = charlm.TrainConfig(corpus=str(corpus), out=str(tmp / "run"), batch_size=4, seq_len=16, warmup_steps=0,
                             max_steps=5, eval_every=5, sample_length=0, device="cpu")
    return charlm.train(cfg, charlm.ModelConfig(embedding_size=8, hidden_size=16))
