"""Option resolution, one function for the CLI and the library: defaults < checkpoint < TOML < flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import charlm
import charlm.training.options as options_mod
from charlm.checkpoint import load_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import ConfigError
from charlm.training.options import explicit_options
from conftest import make_text

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
    reads = []
    real = options_mod.load_checkpoint

    def counting(path, *a, **k):
        reads.append(Path(path).name)
        return real(path, *a, **k)
    monkeypatch.setattr(options_mod, "load_checkpoint", counting)
    r = runner.invoke(app, ["train", "--out", str(run), "--resume", "--max-steps", "12"])
    assert r.exit_code == 0, r.output
    assert reads == ["last.pt"]


def test_explicit_options_are_the_fields_that_differ_from_their_defaults():
    got = explicit_options(TrainConfig(out="r", resume=True, seq_len=32), ModelConfig(cell="lstm"))
    assert got == {"out": "r", "resume": True, "seq_len": 32, "model": "lstm"}
    assert explicit_options(TrainConfig()) == {}
