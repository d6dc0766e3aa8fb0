"""Option resolution, one function for the CLI and the library: defaults < checkpoint < TOML < flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import charlm
from charlm.checkpoint import load_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import ConfigError
from charlm.training.launch import explicit_options
from helpers import make_text

runner = CliRunner()
SMALL = ["--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "32",
         "--eval-every", "10", "--sample-length", "0", "--warmup-steps", "0", "--device", "cpu"]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    corpus = tmp_path / "small.txt"
    corpus.write_text(make_text(4000), encoding="utf-8")
    out = tmp_path / "r"
    r = runner.invoke(app, ["train", str(corpus), *SMALL, "--max-steps", "10", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_the_library_resumes_a_run_started_with_non_default_options(run):
    """Issue 11: this raised "cannot resume: the run was trained with --seq-len 32, but 64 was given"."""
    charlm.train(TrainConfig(out=str(run), resume=True, max_steps=20))
    ck = load_checkpoint(run / "last.pt")
    assert ck["progress"]["step"] == 20
    assert ck["train_config"]["seq_len"] == 32 and ck["model_config"]["hidden_size"] == 16


def test_the_library_still_refuses_a_contradicting_option(run):
    with pytest.raises(ConfigError, match="--seq-len 32, but 48 was given"):
        charlm.train(TrainConfig(out=str(run), resume=True, max_steps=20, seq_len=48))


def test_a_resume_reads_last_pt_once(run, monkeypatch):
    """The launch reads last.pt, and the set-up restores from that same read (a value,
    Launch.checkpoint, handed over: no module-level cache)."""
    import charlm.checkpoint as checkpoint_mod

    reads = []
    real = checkpoint_mod.load_checkpoint

    def counting(path, *a, **k):
        reads.append(Path(path).name)
        return real(path, *a, **k)
    monkeypatch.setattr(checkpoint_mod, "load_checkpoint", counting)
    r = runner.invoke(app, ["train", "--out", str(run), "--resume", "--max-steps", "12"])
    assert r.exit_code == 0, r.output
    assert reads == ["last.pt"]


def test_explicit_options_are_the_fields_that_differ_from_their_defaults():
    got = explicit_options(TrainConfig(out="r", resume=True, seq_len=32), ModelConfig(cell="lstm"))
    assert got == {"out": "r", "resume": True, "seq_len": 32, "model": "lstm"}
    assert explicit_options(TrainConfig()) == {}


# --- --state-reset (issue 12 §3): a TrainConfig field recorded in the checkpoint -------------



@pytest.mark.parametrize("mode", ["epoch", "chunk"])
def test_state_reset_chunk_starts_every_chunk_from_zero(tmp_path, mode, monkeypatch):
    import charlm.training.loop as loop_mod
    from charlm.training import train

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000), encoding="utf-8")
    zero_at_start = []
    real = loop_mod.train_step

    def spy(state, *a, **k):
        zero_at_start.append(all(bool((h == 0).all()) for h in state.hidden))
        return real(state, *a, **k)
    monkeypatch.setattr(loop_mod, "train_step", spy)
    cfg = TrainConfig(corpus=str(corpus), out=str(tmp_path / mode), max_steps=6, eval_every=3,
                      batch_size=4, seq_len=8, sample_length=0, device="cpu", state_reset=mode)
    run = train(cfg, ModelConfig(hidden_size=8, embedding_size=8))
    assert zero_at_start == ([True] * 6 if mode == "chunk" else [True] + [False] * 5)
    assert load_checkpoint(run / "last.pt")["train_config"]["state_reset"] == mode


def test_a_resume_must_agree_on_state_reset(tmp_path):
    from dataclasses import replace
    from charlm.training import train

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000), encoding="utf-8")
    cfg = TrainConfig(corpus=str(corpus), out=str(tmp_path / "r"), max_steps=3, eval_every=3,
                      batch_size=4, seq_len=8, sample_length=0, device="cpu", state_reset="chunk")
    train(cfg, ModelConfig(hidden_size=8, embedding_size=8))
    with pytest.raises(ConfigError, match="--state-reset chunk, but epoch was given"):
        train(replace(cfg, resume=True, max_steps=6, state_reset="epoch"))
    charlm.train(TrainConfig(out=str(tmp_path / "r"), resume=True, max_steps=6))   # the run's own mode
    assert load_checkpoint(tmp_path / "r" / "last.pt")["train_config"]["state_reset"] == "chunk"
