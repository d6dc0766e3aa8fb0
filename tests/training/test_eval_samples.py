"""Samples during training: one per evaluation in RUN/samples.txt and as a Sampled event, the same
seed every time, the training's random streams untouched (exact resume still holds)."""

from __future__ import annotations

import io

import torch
from rich.console import Console
from typer.testing import CliRunner

from charlm.checkpoint import load_model
from charlm.cli import app
from charlm.cli.training_view import TrainingView
from charlm.config import ModelConfig, TrainConfig
from charlm.events import Sampled
from charlm.metrics import read_metrics
from charlm.training import resolve_options, train
from charlm.training.samples import eval_sample, read_samples
from helpers import TINY, stop_after, tiny_config

runner = CliRunner()
LENGTH = 40
# Two layers with dropout: the training draws from the RNG, so an exact resume proves the
# samples left its stream alone.
MODEL = ModelConfig(hidden_size=16, embedding_size=8, layers=2, dropout=0.2)


def tiny(corpus, out, **kw) -> TrainConfig:
    return tiny_config(corpus, out, **{**dict(seq_len=8, seed=5, eval_sample_length=LENGTH), **kw})


def test_one_sample_per_evaluation(corpus_file, tmp_path):
    events = []
    run = train(tiny(corpus_file, tmp_path / "run"), MODEL, on_event=events.append)
    entries = read_samples(run / "samples.txt")
    assert [step for step, _ in entries] == [10, 20, 30]
    assert all(len(text) == LENGTH for _, text in entries)
    sampled = [e for e in events if isinstance(e, Sampled)]
    assert [(e.step, e.text) for e in sampled] == entries
    # metrics.jsonl records them too, after the evaluation of the same step
    kinds = [(r["type"], r.get("step")) for r in read_metrics(run / "metrics.jsonl")
             if r["type"] in ("eval", "sample")]
    assert kinds == [("eval", 10), ("sample", 10), ("eval", 20), ("sample", 20), ("eval", 30), ("sample", 30)]


def test_same_seed_same_sample_and_rng_untouched(corpus_file, tmp_path):
    run = train(tiny(corpus_file, tmp_path / "run"), MODEL)
    model, tok, _ = load_model(run / "last.pt")
    model.train()
    rng = torch.get_rng_state()
    a = eval_sample(model, tok, LENGTH, 5, torch.device("cpu"))
    b = eval_sample(model, tok, LENGTH, 5, torch.device("cpu"))
    assert torch.equal(rng, torch.get_rng_state())   # the training's stream is not drawn from
    assert model.training                            # its mode is given back
    assert a == b
    # ... and it is the sample the run wrote at its last evaluation, from these weights
    assert read_samples(run / "samples.txt")[-1] == (30, a)


def test_off(corpus_file, tmp_path):
    run = train(tiny(corpus_file, tmp_path / "a", eval_sample_length=0), MODEL)
    assert not (run / "samples.txt").exists()
    assert not any(r["type"] == "sample" for r in read_metrics(run / "metrics.jsonl"))


def test_resume_exact_with_samples(corpus_file, tmp_path):
    """Stopped at 15, a sample of a step past the checkpoint left behind (a crash after it was
    written), resumed: samples.txt and the losses are those of the uninterrupted run."""
    whole = train(tiny(corpus_file, tmp_path / "whole"), MODEL)
    part = tmp_path / "part"
    train(tiny(corpus_file, part), MODEL, should_stop=stop_after(15))
    assert [s for s, _ in read_samples(part / "samples.txt")] == [10]
    with open(part / "samples.txt", "a", encoding="utf-8") as f:
        f.write("--- step 20 ---\nleft by a crash\n\n")
    model_config, config = resolve_options({"out": str(part), "resume": True})
    train(config, model_config)
    assert (part / "samples.txt").read_text(encoding="utf-8") == (whole / "samples.txt").read_text(encoding="utf-8")
    a, b = load_model(whole / "last.pt")[0], load_model(part / "last.pt")[0]
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_cli_flags_and_plain_view(corpus_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", str(corpus_file), "--out", "run", *TINY, "--max-steps", "10",
                            "--device", "cpu", "--eval-sample-length", "30"])
    assert r.exit_code == 0, r.output
    assert "sample at step 10: " in r.output
    assert [s for s, _ in read_samples(tmp_path / "run" / "samples.txt")] == [10]
    r = runner.invoke(app, ["train", str(corpus_file), "--out", "run2", *TINY, "--max-steps", "10",
                            "--device", "cpu", "--eval-sample-length", "0"])
    assert r.exit_code == 0, r.output
    assert "sample at step" not in r.output
    r = runner.invoke(app, ["train", str(corpus_file), "--eval-sample-length", "-1"])
    assert r.exit_code == 1 and "--eval-sample-length must be from 0 (no samples) to 100,000, got -1" in r.output


def test_view_shows_latest_sample():
    out = io.StringIO()
    view = TrainingView(Console(file=out, width=100), plain=True)
    view(Sampled(500, "the cat\nsat"))
    assert "sample at step 500: the cat⏎sat" in out.getvalue()
    live = TrainingView(Console(file=io.StringIO(), width=100), plain=False)
    live(Sampled(20, "abc"))
    text = io.StringIO()
    Console(file=text, width=100).print(live._renderable())
    assert "sample at step 20" in text.getvalue() and "abc" in text.getvalue()
