"""What many tests share that is not a fixture: where things are, a tiny model's options, a
readable synthetic text, a stop hook. Tests import it as ``from helpers import ...`` (pytest puts
this folder on the path because conftest.py lives here)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from charlm.config import TrainConfig

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# The corpora shared beside the repository (tiny shakespeare, a Korean chat corpus). They are
# never copied into the repository, so a test that needs one skips when a checkout has no
# ../shared (a fresh clone elsewhere, a user's machine).
SHARED_CORPORA = REPO.parent / "shared" / "corpora"

# A tiny model: enough to see the loss fall, small enough to train in a second or two.
TINY = ["--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "10", "--sample-length", "0", "--warmup-steps", "0"]


def tiny_config(corpus, out, **options: Any) -> TrainConfig:
    """The one tiny-run factory: a TrainConfig of 4 streams x 16 tokens on CPU with no closing
    sample, for ``corpus`` into ``out``; ``options`` override any field."""
    base = dict(corpus=str(corpus), out=str(out), batch_size=4, seq_len=16, max_steps=30, eval_every=10,
                warmup_steps=0, device="cpu", sample_length=0, seed=0)
    base.update(options)
    return TrainConfig(**base)


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
