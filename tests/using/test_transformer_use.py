"""A tiny transformer through every command: train (with and without memory), exact resume,
sample (streamed, greedy, beam, --stop, interactive), evaluate, score, info, runs, sweep,
--init-from and export (ONNX and TorchScript, checked against the model over 100 steps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charlm.api import load
from charlm.cli import app
from charlm.config import ModelConfig
from charlm.corpus.tokenizers import CharTokenizer
from charlm.evaluation import evaluate_ids
from charlm.export import export_model
from charlm.metrics import read_metrics
from charlm.model import build_model
from charlm.scoring import token_predictions
from charlm.training import train
from helpers import make_text, stop_after, tiny_config

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
TRANSFORMER = ["--model", "transformer", "--hidden-size", "16", "--heads", "2", "--layers", "2",
               "--batch-size", "4", "--seq-len", "16", "--eval-every", "10", "--sample-length", "0",
               "--warmup-steps", "0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(make_text(3000, seed=5), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("runs") / "tr"
    result = runner.invoke(app, ["train", str(corpus), *TRANSFORMER, "--memory", "8", "--max-steps", "30",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def chunk_losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "chunk"]


def test_the_run_says_what_the_model_sees_and_the_loss_falls(run):
    starts = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "start"]
    assert starts[0]["model"] == "transformer 2x16 (window 16 + memory 8)"
    losses = [loss for _, loss in chunk_losses(run)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    lm = load(run)
    assert lm.model.config.window == 16 and lm.model.reach == 24


def test_without_memory_the_first_line_says_nothing_is_carried(tmp_path, corpus):
    result = runner.invoke(app, ["train", str(corpus), *TRANSFORMER, "--max-steps", "2", "--out", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith(
        "training transformer 2x16 (window 16, nothing carried between chunks)")


@pytest.mark.parametrize("memory", [0, 8])
def test_exact_resume_matches_uninterrupted(tmp_path, corpus, memory):
    model = ModelConfig(cell="transformer", hidden_size=16, heads=2, layers=2, memory=memory, dropout=0.1)
    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_config(corpus, full, max_steps=24), model)
    train(tiny_config(corpus, part, max_steps=24), model, should_stop=stop_after(11))
    train(tiny_config(corpus, part, max_steps=24, resume=True), None)
    assert chunk_losses(part) == chunk_losses(full)           # bit for bit
    a, b = torch.load(full / "last.pt", weights_only=True), torch.load(part / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k])
    for x, y in zip(a["hidden_state"][0], b["hidden_state"][0]):   # the memory, saved and restored
        assert torch.equal(x, y)
    assert a["hidden_state"][0][0].shape == (2, 4, memory, 16)


@pytest.mark.parametrize("extra", [[], ["--temperature", "0"], ["--beam", "3"], ["--stop", "the"],
                                   ["--num-samples", "2", "--prime", "the cat "]])
def test_sample(run, extra):
    result = runner.invoke(app, ["sample", str(run), "--length", "120", "--seed", "1", *extra])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip()) > 0


def test_a_long_prime_is_read_in_windows_and_sampling_is_reproducible(run):
    lm = load(run)
    prime = make_text(2000, seed=9)
    a = lm.sample(prime=prime, length=60, seed=3)
    b = lm.sample(prime=prime, length=60, seed=3)
    assert a == b and len(a) >= 60


def test_interactive(run):
    result = runner.invoke(app, ["sample", str(run), "--interactive", "--length", "20", "--seed", "0"],
                           input="the cat\n/top 3\n/reset\n/quit\n")
    assert result.exit_code == 0, result.output


def test_evaluate_score_info_runs(run, corpus):
    result = runner.invoke(app, ["evaluate", str(run), str(corpus), "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert 0 < doc["loss"] < 4.5
    lm = load(run)
    text = corpus.read_text()[:400]
    scored = lm.score(text)
    assert len(scored.bits) == len(text) and np.isfinite(scored.bits[1:]).all()
    # Scoring and a one-stream evaluation read the same windows: the same total.
    ids = np.asarray(lm.tokenizer.encode(text))
    bits, _, _ = token_predictions(lm.model, ids, "cpu", top=1)
    one = evaluate_ids(lm.model, ids, len(text), torch.device("cpu"), streams=1)
    assert bits.sum() * np.log(2) == pytest.approx(one.nats, rel=1e-6)
    for command in (["info", str(run)], ["runs", str(run.parent)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0 and "transformer" in result.output, result.output


def test_sweep_over_memory_and_init_from(tmp_path, corpus, run):
    result = runner.invoke(app, ["sweep", str(corpus), "--grid", "memory=0,8", *TRANSFORMER, "--max-steps", "4",
                                 "--out", str(tmp_path / "sw")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "sw").iterdir() if p.is_dir()) == ["memory=0", "memory=8"]
    result = runner.invoke(app, ["train", str(corpus), "--init-from", str(run), "--max-steps", "3",
                                 "--out", str(tmp_path / "ft"), "--sample-length", "0"])
    assert result.exit_code == 0, result.output
    assert load(tmp_path / "ft").model.config.memory == 8


def test_bad_options_are_one_line_before_anything_is_written(tmp_path, corpus):
    for extra, fragment in ((["--hidden-size", "30", "--heads", "4"], "multiple of 2 x --heads"),
                            (["--memory", "-1"], "--memory must be"),
                            (["--heads", "0"], "--heads must be")):
        result = runner.invoke(app, ["train", str(corpus), "--model", "transformer", *extra,
                                     "--out", str(tmp_path / "bad")])
        assert result.exit_code != 0 and fragment in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "bad").exists()
    result = runner.invoke(app, ["train", str(corpus), "--memory", "4", "--out", str(tmp_path / "bad")])
    assert result.exit_code != 0 and "--memory is a transformer's" in result.output


def tiny_transformer(memory: int, vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(cell="transformer", vocab_size=vocab, hidden_size=16, heads=2, layers=2,
                                   memory=memory, window=8).validate()).eval()


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
@pytest.mark.parametrize("memory", [0, 4])
def test_export_matches_the_model_over_100_steps(tmp_path, format, memory):
    if format == "onnx":
        pytest.importorskip("onnx")
        ort = pytest.importorskip("onnxruntime")
    tok = CharTokenizer(sorted(set(make_text(3000))))
    model = tiny_transformer(memory, tok.vocab_size)
    path, vocab = export_model(model, tok, tmp_path / f"m.{format}", format)
    doc = json.loads(vocab.read_text())
    assert doc["state_inputs"] == ["keys", "values", "filled"] and "keys" in doc["inputs"]
    if format == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        call = lambda ids, *state: session.run(None, {"ids": ids, **dict(zip(doc["state_inputs"], state))})
    else:
        loaded = torch.jit.load(str(path))

        def call(ids, *state):
            with torch.no_grad():
                return [o.numpy() for o in loaded(torch.from_numpy(ids), *map(torch.from_numpy, state))]
    ids = torch.randint(0, tok.vocab_size, (3, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = model.read(ids, model.step_state(3))
    cache = model.step_state(3)
    state = [torch.stack([layer[j] for layer in cache]).numpy() for j in range(3)]
    got = []
    for t in range(ids.size(1)):
        logits, *state = call(ids[:, t:t + 1].numpy(), *state)
        got.append(logits)
    np.testing.assert_allclose(np.concatenate(got, axis=1), want.numpy(), atol=1e-4, rtol=0)
    # A block of tokens per call works too (free batch and sequence axes): 2 streams, 7 then 5.
    empty = model.step_state(2)
    first = call(ids[:2, :7].numpy(), *[torch.stack([layer[j] for layer in empty]).numpy() for j in range(3)])
    second = call(ids[:2, 7:12].numpy(), *first[1:])
    np.testing.assert_allclose(np.concatenate([first[0], second[0]], axis=1), want[:2, :12].numpy(), atol=1e-4, rtol=0)
