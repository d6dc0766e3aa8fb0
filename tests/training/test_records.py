"""--records: the state is zeroed before each separator is read, in training, evaluation, sampling.

Known answers: the segmented forward equals running every record on its own from a fresh state
(float64, every cell); the output at a record start is the same whatever came before; evaluation
with the separator is the sum of the records' own losses; resume stays exact; a sample is one
record (it stops at the separator).
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from charlm.checkpoint import load_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import ConfigError
from charlm.evaluation import evaluate_ids
from charlm.model import CharRNN
from charlm.training import train
from helpers import stop_after
from test_resume import assert_same_checkpoint, chunk_losses, eval_records

runner = CliRunner()
CELLS = ["rnn", "lstm", "gru", "mingru", "minlstm"]
SEP = 1   # the separator's id in the synthetic id streams below


def tiny_model(cell: str, layers: int = 2, vocab: int = 7) -> CharRNN:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell=cell, vocab_size=vocab, hidden_size=8, embedding_size=6,
                                layers=layers, dropout=0.0).validate()).double().eval()
    return model


def random_state(model: CharRNN, batch: int):
    return tuple(torch.randn_like(s, dtype=torch.float64) for s in model.init_state(batch))


def row_state(state, b):
    return tuple(s[:, b:b + 1] for s in state)


@pytest.mark.parametrize("cell", CELLS)
def test_segmented_forward_equals_each_record_alone(cell):
    """Each stream's logits: the part before its first separator continues the carried state, and
    every record (separator included) is exactly the record run alone from a zero state."""
    model = tiny_model(cell)
    rng = np.random.default_rng(0)
    B, T = 3, 23
    x = torch.from_numpy(rng.integers(2, 7, size=(B, T)))
    x[0, [0, 5, 6, 15]] = SEP      # a reset at the chunk start, two in a row (an empty record)
    x[1, [9, 20]] = SEP
    # stream 2 has no separator: it must simply carry its state through the chunk
    state = random_state(model, B)
    with torch.no_grad():
        logits, new_state = model(x, state, x == SEP)
        for b in range(B):
            starts = [0] + [t for t in range(T) if x[b, t] == SEP] + [T]
            for s, e in zip(starts[:-1], starts[1:]):
                if s == e:
                    continue
                alone_state = None if x[b, s] == SEP else row_state(state, b)
                alone, last = model(x[b:b + 1, s:e], alone_state)
                assert torch.allclose(logits[b:b + 1, s:e], alone, atol=1e-12, rtol=0), (b, s, e)
            for got, want in zip(row_state(new_state, b), last):
                assert torch.allclose(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "mingru"])
def test_no_separator_is_the_plain_forward(cell):
    model = tiny_model(cell)
    x = torch.randint(2, 7, (4, 16))
    state = random_state(model, 4)
    with torch.no_grad():
        a, sa = model(x, state, x == SEP)
        b, sb = model(x, state)
    assert torch.equal(a, b) and all(torch.equal(p, q) for p, q in zip(sa, sb))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_record_start_ignores_the_previous_record(cell):
    """Synthetic records whose last character is set by their first: whatever the previous record
    (and the carried state) was, the outputs from a separator on are identical."""
    model = tiny_model(cell)
    rng = random.Random(1)
    nxt = [SEP] + [rng.randint(2, 6) for _ in range(5)] + [SEP]
    with torch.no_grad():
        outs = []
        for trial in range(4):
            prev = [rng.randint(2, 6) for _ in range(rng.randint(1, 9))]
            x = torch.tensor([prev + nxt])
            logits, _ = model(x, random_state(model, 1), x == SEP)
            outs.append(logits[0, len(prev):])
        fresh, _ = model(torch.tensor([nxt[:-1]]))       # the record from a zero state, alone
    for out in outs:
        assert torch.equal(out, outs[0])
        assert torch.allclose(out[:-1], fresh[0], atol=1e-12, rtol=0)


def test_gradient_does_not_cross_a_record_start():
    model = tiny_model("lstm", layers=1)
    x = torch.tensor([[3, 4, 5, SEP, 2, 6, 3]])
    state = tuple(s.requires_grad_() for s in random_state(model, 1))
    logits, _ = model(x, state, x == SEP)
    logits[0, 3:].sum().backward()
    assert all(s.grad is not None and torch.all(s.grad == 0) for s in state)


def test_evaluation_is_the_sum_of_the_records_own_losses():
    model = tiny_model("gru").float()
    rng = np.random.default_rng(3)
    records = [rng.integers(2, 7, size=rng.integers(1, 12)).tolist() for _ in range(60)]
    ids = np.array([t for r in records for t in [SEP] + r], dtype=np.int64)[1:]   # no leading separator
    result = evaluate_ids(model, ids, len(ids), torch.device("cpu"), streams=4, chunk=16, context=8,
                          separator=SEP)
    total = 0.0
    with torch.no_grad():
        for i, r in enumerate(records):
            seq = torch.tensor([r if i == 0 else [SEP] + r])
            logits, _ = model(seq)
            if seq.size(1) > 1:
                total += F.cross_entropy(logits[0, :-1], seq[0, 1:], reduction="sum").item()
            if i + 1 < len(records):   # the record's end: the next separator, predicted from it
                total += F.cross_entropy(logits[0, -1:], torch.tensor([SEP]), reduction="sum").item()
    assert result.tokens == len(ids) - 1
    assert result.nats == pytest.approx(total, rel=1e-5)
    plain = evaluate_ids(model, ids, len(ids), torch.device("cpu"), streams=4, chunk=16, context=8)
    assert plain.nats != pytest.approx(total, rel=1e-5)   # without resets the records leak


# ----------------------------------------------------------------------------------------------
# Training, resume, evaluate and sample through the package


def names_corpus(tmp_path, n=160, seed=0):
    """Records like 'kabz': the first letter decides the last (a record-local pattern)."""
    rng = random.Random(seed)
    ends = {"k": "z", "m": "y", "p": "x"}
    lines = []
    for _ in range(n):
        first = rng.choice("kmp")
        lines.append(first + "".join(rng.choice("aeiou") for _ in range(rng.randint(1, 5))) + ends[first])
    path = tmp_path / "names.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config(corpus, out, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), out=str(out), batch_size=4, seq_len=8, max_steps=30, eval_every=10,
                warmup_steps=5, device="cpu", sample_length=0, seed=3, records=True)
    base.update(kw)
    return TrainConfig(**base)


MODEL = ModelConfig(cell="gru", hidden_size=8, embedding_size=8, dropout=0.1)


def test_resume_is_exact_with_records(tmp_path):
    corpus = names_corpus(tmp_path)
    full, part = tmp_path / "full", tmp_path / "part"
    train(config(corpus, full), MODEL)
    train(config(corpus, part), MODEL, should_stop=stop_after(13))
    train(config(corpus, part, resume=True), None)
    assert chunk_losses(part) == chunk_losses(full)
    assert eval_records(part) == eval_records(full)
    assert_same_checkpoint(full / "last.pt", part / "last.pt")
    saved = load_checkpoint(full / "last.pt")["train_config"]
    assert saved["records"] is True and saved["record_sep"] == "\n"

    # a resume must agree with the setting it was trained with
    with pytest.raises(ConfigError, match="--records"):
        train(config(corpus, part, resume=True, records=False, max_steps=40), None)


def test_records_change_training(tmp_path):
    corpus = names_corpus(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    train(config(corpus, a, max_steps=5), MODEL)
    train(config(corpus, b, max_steps=5, records=False), MODEL)
    # the same data and weights at step 1; the resets inside the chunk change the loss
    assert chunk_losses(a)[0][2] != chunk_losses(b)[0][2]


@pytest.mark.parametrize("options,fragment", [
    (["--record-sep", "ab"], "--record-sep"),
    (["--record-sep", "#"], "--record-sep"),
    (["--tokenizer", "bpe"], "--tokenizer char"),
])
def test_bad_separators_are_refused(tmp_path, options, fragment):
    corpus = names_corpus(tmp_path)
    r = runner.invoke(app, ["train", str(corpus), "--out", str(tmp_path / "run"), "--records",
                            "--max-steps", "2", "--device", "cpu", "--batch-size", "4", "--seq-len", "8", *options])
    assert r.exit_code == 1, r.output
    assert fragment in r.output
    assert not (tmp_path / "run").exists()


def test_config_validates_the_separator():
    with pytest.raises(ConfigError):
        TrainConfig(records=True, record_sep="").validate()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("records")
    out = tmp / "run"
    train(config(names_corpus(tmp), out, max_steps=40), MODEL)
    return out, tmp / "names.txt"


def test_sampling_stops_at_the_record_end(trained):
    from charlm.api import load
    lm = load(trained[0], device="cpu")
    samples = lm.sample(length=200, num_samples=8, seed=0)
    assert all("\n" not in s and len(s) < 200 for s in samples)
    # off: the text runs on through separators
    assert any("\n" in s for s in lm.sample(length=200, num_samples=8, seed=0, records=False))
    # the state starts fresh: a prime continues a new record, whatever was sampled before
    assert lm.sample(prime="ka", length=50, seed=1) == lm.sample(prime="ka", length=50, seed=1)
    assert "\n" not in lm.sample(prime="ka", length=50, seed=1)


def test_sample_and_evaluate_commands(trained):
    run, corpus = trained
    r = runner.invoke(app, ["sample", str(run), "--seed", "2", "--num-samples", "3", "--length", "100"])
    assert r.exit_code == 0, r.output
    texts = [line for line in r.output.splitlines() if not line.startswith("---")]
    assert len(texts) == 3 and all(len(t) < 100 for t in texts)   # an empty record is a record
    on = runner.invoke(app, ["evaluate", str(run), str(corpus), "--device", "cpu", "--json", "-"])
    off = runner.invoke(app, ["evaluate", str(run), str(corpus), "--device", "cpu", "--no-records",
                              "--json", "-"])
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    a, b = json.loads(on.output), json.loads(off.output)
    assert a["records"] is True and b["records"] is False
    assert a["loss"] != b["loss"]
