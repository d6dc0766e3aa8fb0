"""Each cell trains and its loss falls; checkpoints round-trip; sampling and evaluation agree."""

import math

import pytest
import torch

import charlm
from charlm.checkpoint import load_checkpoint
from charlm.config import ModelConfig, SampleConfig, TrainConfig
from charlm.metrics import read_metrics
from charlm.model import CharRNN
from charlm.sampling import sample_text
from charlm.corpus.tokenizers import tokenizer_from_dict
from charlm.training import lr_at, train


def tiny_run(tmp_path, corpus_file, cell="lstm", steps=80, name="run", **kw):
    cfg = TrainConfig(corpus=str(corpus_file), out=str(tmp_path / name), batch_size=8, seq_len=16,
                      lr=1e-2, warmup_steps=0, max_steps=steps, eval_every=40, sample_length=0, **kw)
    return train(cfg, ModelConfig(cell=cell, embedding_size=8, hidden_size=32))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_each_cell_learns(tmp_path, corpus_file, cell):
    run = tiny_run(tmp_path, corpus_file, cell)
    records = read_metrics(run / "metrics.jsonl")
    chunks = [r["loss"] for r in records if r["type"] == "chunk"]
    evals = [r for r in records if r["type"] == "eval"]
    assert len(chunks) == 80                        # one record per BPTT chunk
    first, last = sum(chunks[:5]) / 5, sum(chunks[-5:]) / 5
    assert last < first - 0.8, (first, last)        # from ~ln(V) to well below it
    assert evals[-1]["val_loss"] < math.log(16)
    assert evals[-1]["val_bpc"] == pytest.approx(evals[-1]["val_loss"] / math.log(2), rel=1e-3)
    for name in ("last.pt", "best.pt", "config.toml"):
        assert (run / name).is_file()


def test_checkpoint_is_weights_only_and_self_contained(tmp_path, corpus_file):
    run = tiny_run(tmp_path, corpus_file, steps=40)
    raw = torch.load(run / "best.pt", weights_only=True)    # the safe loader reads it as is
    assert raw["format"] == "charlm-checkpoint"
    assert raw["tokenizer"]["kind"] == "char" and raw["progress"]["step"] == 40
    assert {"model", "optimizer", "hidden_state", "rng", "corpus"} <= set(raw)
    (tmp_path / "corpus.txt").unlink()                      # no corpus needed to sample
    lm = charlm.load(run, device="cpu")
    assert len(lm.sample(length=50, seed=1)) == 50


def test_sample_from_saved_run_equals_in_memory_model(tmp_path, corpus_file):
    run = tiny_run(tmp_path, corpus_file, steps=40)
    ckpt = load_checkpoint(run / "best.pt")
    model = CharRNN(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    tok = tokenizer_from_dict(ckpt["tokenizer"])
    cfg = SampleConfig(prime="the ", length=120, temperature=0.9, top_k=10, seed=7)
    expected = sample_text(model, tok, cfg)[0]
    lm = charlm.load(run, device="cpu")
    assert lm.sample(prime="the ", length=120, temperature=0.9, top_k=10, seed=7) == expected
    assert lm.sample(prime="the ", length=120, temperature=0.9, top_k=10, seed=8) != expected
    batch = lm.sample(prime="the ", length=60, seed=3, num_samples=3)
    assert len(batch) == 3 and all(len(t) == 60 for t in batch)


def test_top_p_and_top_k_restrict_the_choice(tmp_path, corpus_file):
    from charlm.sampling import filter_logits
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 1.0, 2, None)[0, 2:]).all()
    kept = torch.isfinite(filter_logits(logits, 1.0, None, 0.5)[0])
    assert kept.tolist() == [True, False, False, False]   # the top token alone has p > 0.5


def test_evaluate_equals_training_validation(tmp_path, corpus_file):
    run = tiny_run(tmp_path, corpus_file, steps=40)
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]
    lm = charlm.load(run / "best.pt", device="cpu")
    result = lm.evaluate_file(corpus_file, tail=0.1)       # the run's validation split
    assert result.loss == pytest.approx(min(e["val_loss"] for e in evals), rel=1e-5)


def test_lr_schedule_warms_up_and_decays_into_the_budget():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0, 0, 100, None) == pytest.approx(1 / 11)
    assert lr_at(cfg, 10, 0, 100, None) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert lr_at(cfg, 100, 0, 100, None) == pytest.approx(0.1)
    # a time budget: half the seconds gone, half the decay done
    assert lr_at(cfg, 50, 30.0, None, 60.0) == pytest.approx(0.55)


def test_sentencepiece_run_reports_bits_per_original_character(tmp_path, corpus_file):
    run = tiny_run(tmp_path, corpus_file, steps=20, tokenizer="bpe", vocab_size=300)
    ev = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"][-1]
    ckpt = load_checkpoint(run / "last.pt")
    chars_per_token = ckpt["corpus"]["chars"] / (ckpt["corpus"]["train_tokens"] + ckpt["corpus"]["val_tokens"])
    assert chars_per_token > 1.5                                # pieces are longer than characters
    assert ev["val_bpc"] == pytest.approx(ev["val_loss"] / math.log(2) / chars_per_token, rel=0.05)
