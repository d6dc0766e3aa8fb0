"""The regularisers issue 15 tried: weight drop (DropConnect on the hidden-to-hidden weights) and
tied embedding/output weights. Dropout itself is covered with the model and resume tests."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import charlm
from charlm.checkpoint import load_checkpoint, save_checkpoint
from charlm.cli import app
from charlm.config import ConfigError, ModelConfig, TrainConfig
from charlm.limits import parameter_count
from charlm.metrics import read_metrics
from charlm.model import CharRNN
from charlm.runinfo import checkpoint_info
from charlm.training import train
from helpers import make_text, stop_after

CELLS = ("rnn", "lstm", "gru")


def _model(cell: str, **kw) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(cell=cell, vocab_size=11, embedding_size=16, hidden_size=16, **kw).validate())


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_masks_the_recurrent_weights_in_training_only(cell):
    model = _model(cell, weight_drop=0.5)
    plain = _model(cell)
    plain.load_state_dict(model.state_dict())
    x = torch.randint(0, 11, (3, 20))

    # Evaluation never drops: the same function as the model without weight drop.
    model.eval(), plain.eval()
    assert torch.equal(model(x)[0], plain(x)[0])

    # Training draws a mask per forward call, so two calls differ, and neither is the plain model.
    model.train(), plain.train()
    a, b = model(x)[0], model(x)[0]
    assert not torch.allclose(a, b) and not torch.allclose(a, plain(x)[0])

    # The gradient reaches the raw weights only through the kept entries (about half of them),
    # and the input-to-hidden weights are untouched by the mask.
    model.zero_grad()
    model(x)[0].square().sum().backward()
    zero = (model.rnn.weight_hh_l0.grad == 0).float().mean().item()
    assert 0.3 < zero < 0.7
    assert (model.rnn.weight_ih_l0.grad == 0).float().mean().item() < 0.05


def test_weight_drop_uses_one_mask_for_every_step_of_a_chunk():
    """AWD-LSTM's variational form: the chunk's steps share the mask, so the output equals a plain
    recurrence whose W_hh is the masked matrix (found by fixing the RNG)."""
    model = _model("rnn", weight_drop=0.4).train()
    x = torch.randint(0, 11, (2, 12))
    torch.manual_seed(5)
    out, _ = model._recur(model.embed(x), None)
    torch.manual_seed(5)
    masked = torch.nn.functional.dropout(model.rnn.weight_hh_l0, 0.4)
    plain = _model("rnn")
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain.rnn.weight_hh_l0.copy_(masked)
    expected, _ = plain._recur(plain.embed(x), None)
    torch.testing.assert_close(out, expected)


def test_tied_weights_share_one_matrix_through_training_saving_and_loading(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000), encoding="utf-8")
    run = tmp_path / "tied"
    model = ModelConfig(embedding_size=24, hidden_size=24, tie_weights=True)
    train(TrainConfig(corpus=str(corpus), out=str(run), batch_size=4, seq_len=16, max_steps=30,
                      eval_every=15, sample_length=0, eval_sample_length=0, device="cpu"), model)
    lm = charlm.load(run, device="cpu")
    assert lm.model.head.weight is lm.model.embed.weight
    n = lm.model.num_parameters()
    assert checkpoint_info(run / "last.pt")["parameters"] == n == parameter_count(lm.config, lm.config.vocab_size)
    untied = CharRNN(ModelConfig(vocab_size=lm.config.vocab_size, embedding_size=24, hidden_size=24))
    assert untied.num_parameters() - n == 24 * lm.config.vocab_size
    ck = load_checkpoint(run / "last.pt")
    assert torch.equal(ck["model"]["head.weight"], ck["model"]["embed.weight"])
    assert len(lm.sample(prime="the ", length=30, seed=1)) == 30


@pytest.mark.parametrize("bad, message", [
    (dict(cell="mingru", weight_drop=0.2), "--weight-drop applies to"),
    (dict(weight_drop=1.0), "--weight-drop must be in [0, 1)"),
    (dict(weight_drop=float("nan")), "--weight-drop must be in [0, 1)"),
    (dict(tie_weights=True, embedding_size=64, hidden_size=512), "--tie-weights needs --embedding-size equal"),
])
def test_bad_regulariser_settings_are_one_clear_error(bad, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**bad).validate()


def test_cli_flags_and_their_errors(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000), encoding="utf-8")
    runner = CliRunner()
    r = runner.invoke(app, ["train", str(corpus), "--tie-weights", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "--tie-weights needs --embedding-size equal" in r.output
    assert not (tmp_path / "x").exists()
    r = runner.invoke(app, ["train", str(corpus), "--weight-drop", "0.3", "--hidden-size", "16", "--embedding-size", "16",
                            "--tie-weights", "--max-steps", "4", "--eval-every", "2", "--batch-size", "2",
                            "--seq-len", "8", "--sample-length", "0", "--out", str(tmp_path / "y")])
    assert r.exit_code == 0, r.output
    saved = load_checkpoint(tmp_path / "y" / "last.pt")["model_config"]
    assert saved["weight_drop"] == 0.3 and saved["tie_weights"] is True


def test_resume_with_weight_drop_is_exact(tmp_path):
    """The masks come from the run's saved RNG, so a resumed run draws the same masks."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(2000, seed=2), encoding="utf-8")
    model = ModelConfig(cell="lstm", embedding_size=8, hidden_size=8, weight_drop=0.3, dropout=0.1)
    cfg = dict(corpus=str(corpus), batch_size=4, seq_len=8, max_steps=24, eval_every=8, warmup_steps=3,
               sample_length=0, eval_sample_length=0, device="cpu")
    full, part = tmp_path / "full", tmp_path / "part"
    train(TrainConfig(out=str(full), **cfg), model)
    train(TrainConfig(out=str(part), **cfg), model, should_stop=stop_after(11))
    train(TrainConfig(out=str(part), resume=True, **cfg), None)
    chunk = lambda run: [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if r["type"] == "chunk"]
    assert chunk(part) == chunk(full) and len(chunk(full)) == 24
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_a_checkpoint_from_before_these_options_still_resumes(tmp_path):
    """Checkpoints written before weight_drop and tie_weights existed lack the keys: they resume
    (the keys had their defaults then), and one with --weight-drop given is refused by name."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(2000, seed=3), encoding="utf-8")
    run = tmp_path / "old"
    cfg = dict(corpus=str(corpus), out=str(run), batch_size=4, seq_len=8, eval_every=4, sample_length=0,
               eval_sample_length=0, device="cpu")
    model = ModelConfig(embedding_size=8, hidden_size=8)
    train(TrainConfig(max_steps=4, **cfg), model)
    ck = load_checkpoint(run / "last.pt")
    for key in ("weight_drop", "tie_weights"):
        del ck["model_config"][key]
    save_checkpoint(ck, run / "last.pt")
    with pytest.raises(ConfigError, match="--weight-drop 0.0, but 0.2 was given"):
        train(TrainConfig(max_steps=8, resume=True, **cfg), ModelConfig(embedding_size=8, hidden_size=8, weight_drop=0.2))
    train(TrainConfig(max_steps=8, resume=True, **cfg), None)
    train(TrainConfig(max_steps=10, resume=True, **cfg), model)
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 10
