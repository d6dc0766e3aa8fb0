"""Shared fixtures (tiny corpora, a tiny trained run, the shared corpora when present) and the
test tiers: tests under e2e/ (subprocesses, SIGKILL, DDP, benchmark smoke) are marked ``e2e``, and
``pytest --quick`` leaves them out for a fast inner loop. Helpers that are not fixtures live in
helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import charlm.threads
from helpers import SHARED_CORPORA, make_text


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run best on one thread: a second OpenMP thread only adds waiting, badly so on a
    2-core machine shared with other work. Tests that compare runs bit for bit do so at equal
    thread counts (subprocesses they start get their own setting)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    charlm.threads._pinned = None   # a command's --threads N pins it for its process: not for the next test


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


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true",
                     help="leave out the end-to-end tier (tests/e2e): the inner loop, about a minute or two")


def pytest_collection_modifyitems(config, items):
    e2e = Path(__file__).resolve().parent / "e2e"
    quick = config.getoption("--quick")
    kept, dropped = [], []
    for item in items:
        if e2e in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
            if quick:
                dropped.append(item)
                continue
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
