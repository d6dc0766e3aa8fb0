"""Fine-tuning: `charlm train NEW_TEXT --init-from RUN` starts from RUN's weights with its
architecture; a char vocabulary grows by the new text's characters (old ids keep their rows, new
rows are a fresh model's); fresh optimizer and progress; the origin is recorded and shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from charlm.checkpoint import load_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import ConfigError
from charlm.metrics import read_metrics
from charlm.model import CharRNN
from charlm.training import resolve_options, train
from charlm.training.samples import read_samples
from charlm.training import plan_configs
from charlm.training.setup import build, prepare_device
from helpers import make_text, stop_after

runner = CliRunner()
MODEL = ModelConfig(hidden_size=32, embedding_size=8)
NEW = "ø"   # the new text's character the source never saw


def options(corpus, out, **kw) -> dict:
    base = dict(corpus=str(corpus), out=str(out), batch_size=4, seq_len=16, eval_every=20, warmup_steps=0,
                device="cpu", sample_length=0, seed=7, lr=1e-2, eval_sample_length=0)
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A run trained on English-like text: it knows the words, not 'ø'."""
    tmp = tmp_path_factory.mktemp("source")
    (tmp / "a.txt").write_text(make_text(6000, seed=0), encoding="utf-8")
    return train(TrainConfig(**options(tmp / "a.txt", tmp / "src", max_steps=150)), MODEL)


@pytest.fixture
def new_text(tmp_path) -> Path:
    path = tmp_path / "b.txt"
    path.write_text(make_text(6000, seed=1).replace("o", NEW), encoding="utf-8")
    return path


def first_loss(run: Path) -> float:
    return next(r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "chunk")


def test_starts_below_a_fresh_model_and_samples_the_new_characters(source, new_text, tmp_path):
    fresh = train(TrainConfig(**options(new_text, tmp_path / "fresh", max_steps=1)), MODEL)
    tuned = train(TrainConfig(**options(new_text, tmp_path / "tuned", max_steps=80, init_from=str(source),
                                        eval_sample_length=300, eval_every=80)), None)
    assert first_loss(tuned) < first_loss(fresh) - 0.5
    ckpt = load_checkpoint(tuned / "last.pt")
    old = load_checkpoint(source / "best.pt")
    assert ckpt["tokenizer"]["chars"][:len(old["tokenizer"]["chars"])] == old["tokenizer"]["chars"]
    assert ckpt["tokenizer"]["chars"][-1] == NEW                       # appended at the end
    assert ckpt["progress"]["step"] == 80                              # fresh progress
    assert ckpt["init_from"]["step"] == 150 and ckpt["init_from"]["run_id"] == old["run_id"]
    assert ckpt["model_config"]["hidden_size"] == 32                   # the source's architecture
    [(step, sample)] = read_samples(tuned / "samples.txt")
    assert step == 80 and NEW in sample


def test_old_rows_kept_new_rows_fresh(source, new_text, tmp_path):
    """Before any step: every source weight in place, and the new id's embedding and output rows
    are those of a freshly initialised model of the new size (same seed)."""
    config = TrainConfig(**options(new_text, tmp_path / "tuned", max_steps=1, init_from=str(source)))
    launch = plan_configs(config)
    device, ctx = prepare_device(launch)
    run = build(launch, device, ctx)
    try:
        model = run.state.model
        old = load_checkpoint(source / "best.pt")["model"]
        V = old["embed.weight"].shape[0]
        assert model.embed.weight.shape[0] == V + 1
        for name, value in model.state_dict().items():
            assert torch.equal(value[:V] if value.shape != old[name].shape else value, old[name]), name
        torch.manual_seed(config.seed)
        fresh = CharRNN(run.model_config)
        assert torch.equal(model.embed.weight[V:], fresh.embed.weight[V:])
        assert torch.equal(model.head.weight[V:], fresh.head.weight[V:])
        assert torch.equal(model.head.bias[V:], fresh.head.bias[V:])
        assert run.state.progress.step == 0 and not run.state.optimizer.state   # fresh optimizer
    finally:
        run.plan.release()


def test_different_architecture_is_one_line(source, new_text, tmp_path):
    out = tmp_path / "tuned"
    r = runner.invoke(app, ["train", str(new_text), "--init-from", str(source), "--out", str(out),
                            "--hidden-size", "64", "--device", "cpu"])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot fine-tune" in lines[0] and "--hidden-size 32" in lines[0], r.output
    assert not out.exists()                                            # nothing written
    r = runner.invoke(app, ["train", str(new_text), "--init-from", str(source), "--out", str(out),
                            "--model", "lstm", "--device", "cpu"])
    assert r.exit_code == 1 and "--model gru" in r.output and not out.exists()


def test_init_from_with_resume_is_refused(source, new_text, tmp_path):
    r = runner.invoke(app, ["train", "--init-from", str(source), "--out", str(source), "--resume"])
    assert r.exit_code == 1
    assert "--init-from" in r.output and "--resume" in r.output and len(r.output.strip().splitlines()) == 1


def test_info_shows_origin_and_a_resume_keeps_it(source, new_text, tmp_path):
    tuned = tmp_path / "tuned"
    train(TrainConfig(**options(new_text, tuned, max_steps=20, init_from=str(source))), None,
          should_stop=stop_after(5))
    model_config, config = resolve_options({"out": str(tuned), "resume": True})
    assert config.init_from is None                                  # how it began is not redone
    train(config, model_config)
    # Wide enough that the source's path (its length depends on pytest's tmp dir) does not wrap.
    r = runner.invoke(app, ["info", str(tuned)], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert "fine-tuned from" in r.output and "step 150" in r.output
    r = runner.invoke(app, ["info", str(tuned / "last.pt"), "--json", "-"])
    doc = json.loads(r.stdout)
    assert doc["init_from"]["step"] == 150
    assert doc["init_from"]["path"] == str((source / "best.pt").resolve())
    assert doc["step"] == 20
    r = runner.invoke(app, ["info", str(source), "--json", "-"])
    assert json.loads(r.stdout)["init_from"] is None


def test_sentencepiece_tokenizer_is_kept(tmp_path, new_text):
    """A sentencepiece source keeps its model as it is: 'ø' falls back to bytes."""
    (tmp_path / "a.txt").write_text(make_text(6000, seed=0), encoding="utf-8")
    src = train(TrainConfig(**options(tmp_path / "a.txt", tmp_path / "src", max_steps=5, tokenizer="spm-char")), MODEL)
    tuned = train(TrainConfig(**options(new_text, tmp_path / "tuned", max_steps=5, init_from=str(src))), None)
    a, b = load_checkpoint(src / "last.pt"), load_checkpoint(tuned / "last.pt")
    assert b["tokenizer"] == a["tokenizer"]
    assert b["train_config"]["tokenizer"] == "spm-char"
    assert b["model_config"]["vocab_size"] == a["model_config"]["vocab_size"]


@pytest.mark.parametrize("given, named", [
    (["--tokenizer", "bpe"], "--tokenizer bpe"), (["--vocab-size", "50"], "--vocab-size 50"),
    (["--tokenizer", "unigram", "--vocab-size", "60"], "--tokenizer unigram and --vocab-size 60"),
])
def test_a_tokenizer_option_with_init_from_is_refused_not_dropped(source, new_text, tmp_path, given, named):
    out = tmp_path / "tuned"
    r = runner.invoke(app, ["train", str(new_text), "--init-from", str(source), "--out", str(out),
                            "--device", "cpu", *given])
    assert r.exit_code == 1, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and named in r.stderr
    assert "keeps its source's tokenizer (char)" in r.stderr
    assert not out.exists()                                            # nothing written
    with pytest.raises(ConfigError, match="keeps its source's tokenizer"):   # the API too
        train(TrainConfig(**options(new_text, out, max_steps=5, init_from=str(source), tokenizer="bpe")), None)
    assert not out.exists()
    # The source's own tokenizer, named, is no contradiction.
    model_config, config = resolve_options(options(new_text, out, init_from=str(source), tokenizer="char"))
    assert config.tokenizer == "char"
