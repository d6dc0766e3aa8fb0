"""Exact resume: N steps, stop, `--resume` for M more == N+M uninterrupted, bit for bit on CPU.

The interrupted run is launched with the same --max-steps as the uninterrupted one, because the
learning-rate schedule depends on the whole budget (and --max-steps counts the whole run). The
corpus is short enough that the runs cross an epoch boundary (the state reset and the data
position must survive the checkpoint too), and dropout is on, so the RNG state matters.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from charlm.checkpoint import load_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.metrics import read_metrics
from charlm.training import resolve_options, train
import helpers
from helpers import make_text, stop_after

runner = CliRunner()


TOTAL = 40          # steps of the whole run
STOP_AT = (7, 23)   # where the interrupted run stops (mid-interval, and across an epoch border)


def tiny_config(corpus, out, **kw) -> TrainConfig:
    return helpers.tiny_config(corpus, out, **{**dict(seq_len=8, max_steps=TOTAL, warmup_steps=5, seed=3), **kw})


def chunk_losses(run_dir):
    return [(r["step"], r["epoch"], r["loss"], r["grad_norm"], r["lr"], r["tokens"])
            for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "chunk"]


def eval_records(run_dir):
    return [(r["step"], r["train_loss"], r["val_loss"], r["best"])
            for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "eval"]


def assert_same_checkpoint(a_path, b_path):
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"weights {k} differ"
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in pa:
            assert torch.equal(pa[k], pb[k]), f"optimizer state {k} differs"
    for ha, hb in zip(a["hidden_state"][0], b["hidden_state"][0]):
        assert torch.equal(ha, hb)
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    pa = {k: v for k, v in a["progress"].items() if k not in ("elapsed", "metrics_offset")}
    pb = {k: v for k, v in b["progress"].items() if k not in ("elapsed", "metrics_offset")}
    assert pa == pb


@pytest.fixture
def small_corpus(tmp_path):
    # ~900 characters: 4 streams of ~200 tokens -> 25 steps of 8 per epoch, so 40 steps cross one.
    path = tmp_path / "small.txt"
    path.write_text(make_text(900, seed=1), encoding="utf-8")
    return path


@pytest.mark.parametrize("cell,stop_at", [("lstm", STOP_AT[0]), ("lstm", STOP_AT[1]),
                                          ("gru", STOP_AT[1]), ("rnn", STOP_AT[0])])
def test_exact_resume_matches_uninterrupted(tmp_path, small_corpus, cell, stop_at):
    model = ModelConfig(cell=cell, hidden_size=8, embedding_size=8, dropout=0.1)
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(small_corpus, full), model)

    train(tiny_config(small_corpus, part), model, should_stop=stop_after(stop_at))
    ck = load_checkpoint(part / "last.pt")
    assert ck["progress"]["step"] == stop_at
    # The checkpoint's own model and options are used: model_config=None, as `--resume` does.
    train(tiny_config(small_corpus, part, resume=True), None)

    losses = chunk_losses(full)
    assert [s for s, *_ in losses] == list(range(1, TOTAL + 1))
    assert {e for _, e, *_ in losses} == {0, 1}, "the run should cross an epoch boundary"
    assert chunk_losses(part) == losses             # same per-chunk losses, bit for bit
    assert eval_records(part) == eval_records(full)  # same validation losses and best flags
    assert_same_checkpoint(full / "last.pt", part / "last.pt")
    assert_same_checkpoint(full / "best.pt", part / "best.pt")


def test_resume_twice_and_through_the_cli(tmp_path, small_corpus):
    """Stop twice, then resume with only `--out DIR --resume`: the checkpoint's options are used
    and --max-steps (from the checkpoint) still counts the whole run."""
    model = ModelConfig(cell="lstm", hidden_size=8, embedding_size=8)
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(small_corpus, full), model)
    train(tiny_config(small_corpus, part), model, should_stop=stop_after(12))
    train(tiny_config(small_corpus, part, resume=True), None, should_stop=stop_after(9))
    assert load_checkpoint(part / "last.pt")["progress"]["step"] == 21
    # --device cpu: a resume otherwise picks the best device present, and bit-exactness is a CPU promise.
    r = runner.invoke(app, ["--quiet", "train", "--out", str(part), "--resume", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert chunk_losses(part) == chunk_losses(full)
    assert_same_checkpoint(full / "last.pt", part / "last.pt")

    # A finished run resumed with a larger budget continues from where it stopped.
    r = runner.invoke(app, ["--quiet", "train", "--out", str(part), "--resume", "--max-steps", "45",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(part / "last.pt")["progress"]["step"] == 45
    steps = [s for s, *_ in chunk_losses(part)]
    assert steps == list(range(1, 46))


@pytest.mark.parametrize("option,value,fragment", [
    ("--hidden-size", "16", "--hidden-size 8"),
    ("--model", "gru", "--model lstm"),
    ("--layers", "2", "--layers 1"),
    ("--tokenizer", "spm-char", "--tokenizer char"),
    ("--seq-len", "16", "--seq-len 8"),
    ("--normalize", "nfd", "--normalize none"),
])
def test_resume_refuses_a_different_model_or_tokenizer(tmp_path, small_corpus, option, value, fragment):
    run = tmp_path / "run"
    train(tiny_config(small_corpus, run, max_steps=5),
          ModelConfig(cell="lstm", hidden_size=8, embedding_size=8))
    before = (run / "last.pt").read_bytes()
    r = runner.invoke(app, ["train", str(small_corpus), "--out", str(run), "--resume", option, value])
    assert r.exit_code == 1, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in r.output
    assert "cannot resume" in err and fragment in err, err
    assert (run / "last.pt").read_bytes() == before   # nothing was touched


def test_resume_refuses_a_changed_corpus(tmp_path, small_corpus):
    run = tmp_path / "run"
    train(tiny_config(small_corpus, run, max_steps=5),
          ModelConfig(cell="lstm", hidden_size=8, embedding_size=8))
    small_corpus.write_text(make_text(900, seed=2), encoding="utf-8")
    r = runner.invoke(app, ["train", "--out", str(run), "--resume"])
    assert r.exit_code == 1 and "corpus" in r.stderr and "changed" in r.stderr, r.output


def test_resolve_options_on_resume(tmp_path, small_corpus):
    """The checkpoint's options are the base; a named model option that agrees is accepted."""
    run = tmp_path / "run"
    train(tiny_config(small_corpus, run, max_steps=5, lr=0.01),
          ModelConfig(cell="gru", hidden_size=8, embedding_size=8))
    model, cfg = resolve_options({"out": str(run), "resume": True})
    assert (model.cell, model.hidden_size, model.embedding_size) == ("gru", 8, 8)   # the checkpoint's model
    assert cfg.lr == 0.01 and cfg.max_steps == 5 and cfg.seq_len == 8
    model, cfg = resolve_options({"out": str(run), "resume": True, "hidden_size": 8, "max_time": 60.0})
    assert model.cell == "gru" and model.hidden_size == 8
    assert cfg.max_steps is None and cfg.max_time == 60.0   # a new stopping rule replaces the old one


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_exact_resume_on_cuda_within_tolerance(tmp_path, small_corpus):
    """On CUDA, cuDNN's RNN kernels and atomics are not bit-reproducible, so the promise is a
    tolerance (docs/reliability.md): per-chunk losses within 1e-4 relative, weights within 1e-4."""
    model = ModelConfig(cell="lstm", hidden_size=32, embedding_size=16, dropout=0.1)
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(small_corpus, full, device="cuda"), model)
    train(tiny_config(small_corpus, part, device="cuda"), model, should_stop=stop_after(STOP_AT[1]))
    train(tiny_config(small_corpus, part, device="cuda", resume=True), None)
    a, b = chunk_losses(full), chunk_losses(part)
    assert [r[0] for r in a] == [r[0] for r in b]
    for ra, rb in zip(a, b):
        assert ra[2] == pytest.approx(rb[2], rel=1e-4, abs=1e-5), (ra, rb)
    ca, cb = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    for k in ca["model"]:
        torch.testing.assert_close(ca["model"][k], cb["model"][k], rtol=1e-4, atol=1e-4)


def test_a_run_ending_just_after_an_evaluation_adds_none_and_resumes_exactly(tmp_path, small_corpus):
    # Constant lr, so a run stopped by --max-steps and extended follows the longer run's schedule.
    flat = dict(warmup_steps=0, min_lr_ratio=1.0, eval_every=10)
    model = ModelConfig(cell="lstm", hidden_size=8, embedding_size=8, dropout=0.1)
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(small_corpus, full, **flat), model)
    train(tiny_config(small_corpus, part, max_steps=21, **flat), model)
    # Step 21 is one step after the evaluation at 20: no near-duplicate row of a one-chunk mean.
    assert [r[0] for r in eval_records(part)] == [10, 20]
    assert load_checkpoint(part / "last.pt")["progress"]["step"] == 21
    train(tiny_config(small_corpus, part, resume=True, **flat), None)
    assert eval_records(part) == eval_records(full)
    assert_same_checkpoint(part / "last.pt", full / "last.pt")
