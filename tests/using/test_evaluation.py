"""The stateful evaluation: every target scored once, with enough history to match one stream.

evaluate_ids cuts the text into streams run side by side; each stream but the first reads some
tokens before its piece without scoring them. Compared here with the plainest possible
evaluation: one stream through the whole text, token after token, state carried.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charlm.config import ModelConfig
from charlm.evaluation import evaluate_ids
from charlm.model import CharRNN


def one_stream_nats(model: CharRNN, ids: np.ndarray) -> float:
    """Sum of -log p(ids[t] | ids[:t]) for t = 1 .. N-1: one stream, the whole history."""
    with torch.no_grad():
        x = torch.from_numpy(ids[:-1].astype(np.int64))[None]     # (1, N-1)
        y = torch.from_numpy(ids[1:].astype(np.int64))            # (N-1,)
        logits, _ = model(x)                                       # (1, N-1, V)
        return float(F.cross_entropy(logits[0].double(), y, reduction="sum"))


@pytest.fixture
def model_and_ids():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell="gru", vocab_size=12, hidden_size=24, embedding_size=8).validate())
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 12, size=3001).astype(np.uint16)   # the split's on-disk dtype
    return model, ids


@pytest.mark.parametrize("streams,chunk", [(1, 256), (4, 100), (7, 64)])
def test_full_context_equals_one_stream(model_and_ids, streams, chunk):
    """With a lead-in as long as the text, every stream sees all of its history: the sum of the
    streams' scored losses is the one-stream loss, so each target is scored exactly once."""
    model, ids = model_and_ids
    got = evaluate_ids(model, ids, chars=len(ids), device=torch.device("cpu"), streams=streams,
                       chunk=chunk, context=len(ids))
    want = one_stream_nats(model, ids)
    assert got.tokens == len(ids) - 1
    assert got.nats == pytest.approx(want, rel=1e-5)


def test_short_lead_in_is_close_and_zero_state_starts_are_not_counted_twice(model_and_ids):
    """A bounded lead-in stays near the one-stream figure (a GRU forgets the far past); the lead-in
    itself is never scored, whatever the number of streams."""
    model, ids = model_and_ids
    want = one_stream_nats(model, ids) / (len(ids) - 1)
    for streams in (2, 5):
        got = evaluate_ids(model, ids, chars=len(ids), device=torch.device("cpu"), streams=streams,
                           chunk=128, context=64)
        assert got.tokens == len(ids) - 1
        assert got.loss == pytest.approx(want, abs=2e-3)


def test_trained_model_zero_state_starts_bias_upwards_and_the_lead_in_removes_it(tmp_path):
    """On a model that has learnt to use its history, starting many streams from a zero state
    costs loss; a lead-in of context tokens brings the figure back to the one-stream one."""
    from charlm.training import train
    from charlm.config import TrainConfig
    from helpers import make_text

    path = tmp_path / "c.txt"
    path.write_text(make_text(8000, seed=3), encoding="utf-8")
    run = train(TrainConfig(corpus=str(path), out=str(tmp_path / "run"), batch_size=8, seq_len=32,
                            max_steps=120, eval_every=1000, sample_length=0, device="cpu", lr=1e-2),
                ModelConfig(cell="gru", hidden_size=32, embedding_size=8))
    from charlm.checkpoint import load_model

    model, tok, _ = load_model(run / "last.pt", "cpu")
    ids = np.asarray(tok.encode(make_text(4000, seed=11)))
    exact = one_stream_nats(model, ids) / (len(ids) - 1)
    cpu = torch.device("cpu")
    cold = evaluate_ids(model, ids, len(ids), cpu, streams=60, chunk=64, context=0).loss
    warm = evaluate_ids(model, ids, len(ids), cpu, streams=60, chunk=64, context=64).loss
    assert cold > exact + 1e-3                      # 60 cold starts show
    assert abs(warm - exact) < abs(cold - exact) / 3


def test_max_tokens_scores_evenly_spread_pieces(model_and_ids):
    """A capped evaluation scores exactly its budget, from pieces spread over the whole text (not
    just its start), the same pieces each time."""
    model, ids = model_and_ids
    cpu = torch.device("cpu")
    a = evaluate_ids(model, ids, chars=len(ids), device=cpu, streams=8, max_tokens=800)
    b = evaluate_ids(model, ids, chars=len(ids), device=cpu, streams=8, max_tokens=800)
    assert a.tokens == 800 and a.nats == b.nats
    assert a.chars == pytest.approx(len(ids) * 800 / len(ids))
    # Spread: change only the text's last quarter and the capped figure moves.
    changed = ids.copy()
    changed[-len(ids) // 4:] = 1
    c = evaluate_ids(model, changed, chars=len(ids), device=cpu, streams=8, max_tokens=800)
    assert c.nats != a.nats
    # A budget at least the split's size is the whole evaluation.
    full = evaluate_ids(model, ids, chars=len(ids), device=cpu, streams=8)
    assert evaluate_ids(model, ids, len(ids), cpu, streams=8, max_tokens=10 ** 6).nats == full.nats


def test_training_validation_uses_the_capped_sample(tmp_path):
    """--eval-tokens bounds what each evaluation during training scores; 0 scores everything."""
    from charlm.config import TrainConfig
    from charlm.metrics import read_metrics
    from charlm.training import train
    from helpers import make_text

    path = tmp_path / "c.txt"
    path.write_text(make_text(20000, seed=5), encoding="utf-8")
    losses = {}
    for cap in (0, 256):
        run = train(TrainConfig(corpus=str(path), out=str(tmp_path / f"r{cap}"), batch_size=4, seq_len=16,
                                max_steps=4, eval_every=4, eval_tokens=cap, sample_length=0, device="cpu",
                                precision="fp32"), ModelConfig(cell="gru", hidden_size=16, embedding_size=8))
        losses[cap] = [r["val_loss"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]
    import charlm

    full = charlm.load(tmp_path / "r0", device="cpu").evaluate_file(path, tail=0.1)
    assert losses[0][-1] == pytest.approx(full.loss, rel=1e-6)
    assert losses[256][-1] != pytest.approx(full.loss, rel=1e-6)


def test_fewer_than_two_tokens_is_refused_not_a_perfect_score(model_and_ids):
    """Issue 14 §5: one character has nothing to predict; a loss of 0 would read as perfect."""
    from charlm.errors import CorpusError
    from charlm.evaluation import EvalResult

    model, ids = model_and_ids
    for n in (0, 1):
        with pytest.raises(CorpusError, match="at least two are needed"):
            evaluate_ids(model, ids[:n], n, torch.device("cpu"))
    assert evaluate_ids(model, ids[:2], 2, torch.device("cpu")).tokens == 1
    empty = EvalResult(nats=0.0, tokens=0, chars=0.0)
    assert np.isnan(empty.loss) and np.isnan(empty.bits_per_char) and not empty.finite


def test_cli_evaluate_refuses_one_char_and_a_vanishing_tail(tmp_path, corpus_file):
    from typer.testing import CliRunner

    from charlm.cli import app
    from charlm.training import train
    from charlm.config import TrainConfig

    run = tmp_path / "run"
    train(TrainConfig(corpus=str(corpus_file), out=str(run), batch_size=4, seq_len=8, max_steps=2,
                      eval_every=2, device="cpu", sample_length=0, warmup_steps=0),
          ModelConfig(cell="gru", hidden_size=8, embedding_size=8))
    one = tmp_path / "one.txt"
    one.write_text("t", encoding="utf-8")
    runner = CliRunner()
    for args in (["evaluate", str(run), str(one)], ["evaluate", str(run), str(corpus_file), "--tail", "1e-9"]):
        r = runner.invoke(app, args + ["--device", "cpu"])
        assert r.exit_code == 1, r.output
        assert "at least two are needed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["evaluate", str(run), str(corpus_file), "--tail", "0.1", "--json", "-", "--device", "cpu"])
    assert r.exit_code == 0 and '"loss"' in r.stdout


def test_a_huge_vocabulary_is_evaluated_in_chunks_that_fit(monkeypatch):
    """The logits of a chunk stay under LOGIT_BUDGET floats whatever the vocabulary (300,000
    characters were OOM-killed at 24 GB), and the figure is the one a wide chunk gives."""
    import charlm.evaluation as ev
    from charlm.config import ModelConfig
    from charlm.model import CharRNN

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=500, embedding_size=4, hidden_size=8)).eval()
    ids = np.random.default_rng(0).integers(0, 500, size=3000)
    wide = ev.evaluate_ids(model, ids, len(ids), torch.device("cpu"))
    shapes = []
    real = model.forward

    def spy(x, *a, **k):
        shapes.append(tuple(x.shape))
        return real(x, *a, **k)
    monkeypatch.setattr(model, "forward", spy)
    monkeypatch.setattr("charlm.limits.LOGIT_BUDGET", 46 * 7 * 500)    # room for 7 steps of the 46 streams
    narrow = ev.evaluate_ids(model, ids, len(ids), torch.device("cpu"))
    assert shapes and all(s * t * 500 <= 46 * 7 * 500 for s, t in shapes)
    assert max(t for _, t in shapes) == 7
    assert narrow.tokens == wide.tokens and narrow.nats == pytest.approx(wide.nats, rel=1e-5)


def test_a_prime_is_read_in_chunks_that_fit_the_vocabulary(monkeypatch):
    """The prime's (1, T, V) logits are bounded the same way, and the state it leaves is the one a
    single pass leaves."""
    import charlm.sampling as sampling
    from charlm.config import ModelConfig
    from charlm.model import CharRNN

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=500, embedding_size=4, hidden_size=8)).eval()
    ids = np.random.default_rng(1).integers(0, 500, size=400)
    whole_logits, whole_state = sampling.run_prime(model, ids, "cpu")
    widths = []
    real = model.forward

    def spy(x, *a, **k):
        widths.append(x.shape[1])
        return real(x, *a, **k)
    monkeypatch.setattr(model, "forward", spy)
    monkeypatch.setattr("charlm.limits.LOGIT_BUDGET", 30 * 500)
    logits, state = sampling.run_prime(model, ids, "cpu")
    assert max(widths) == 30 and sum(widths) == 400
    torch.testing.assert_close(logits, whole_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state[0], whole_state[0], rtol=1e-5, atol=1e-6)
