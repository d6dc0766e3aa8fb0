"""`charlm inspect-attention`: the weights recomputed from a block are the ones its fused attention
used, a head that looks evenly gives the figures worked out by hand, and the command's manners."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charlm.cli import app
from charlm.config import ModelConfig
from charlm.corpus.tokenizers import CharTokenizer
from charlm.errors import ConfigError
from charlm.lab.attention import NEAR, inspect_attention
from charlm.model import build_model
from helpers import make_text

runner = CliRunner()
TEXT = "def f(a, b):\n    return (a + b) * [c(d)]\n" * 24


def transformer(memory: int, window: int = 16, sharp: float = 1.0) -> tuple[torch.nn.Module, CharTokenizer]:
    tok = CharTokenizer(sorted(set(TEXT)), "none")
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="transformer", vocab_size=tok.vocab_size, hidden_size=16, heads=2,
                                    layers=2, memory=memory, window=window))
    with torch.no_grad():
        for block in model.blocks:
            block.qkv.weight.mul_(sharp)     # larger scores: peaked weights, a stricter comparison
    return model, tok


@pytest.mark.parametrize("memory", [0, 8])
def test_the_recomputed_weights_give_the_fused_attention_output(memory):
    model, tok = transformer(memory, sharp=20.0)
    study = inspect_attention(model, tok, TEXT)
    assert study.fidelity < 1e-5
    assert len(study.heads) == 4 and study.pairs > 0
    assert all(0 <= r.mean_distance <= 16 + memory and 0 < r.near <= 1 for r in study.heads)


def test_a_head_that_looks_evenly_gives_the_figures_worked_out_by_hand():
    """With the queries' weights zero every score is 0: each query spreads its attention evenly
    over the t + 1 tokens it sees (window 16, no memory). Its mean distance is then t / 2, its
    share on the last 8 tokens min(t + 1, 8) / (t + 1), and its share on a bracket's partner is
    exactly what an even look gives."""
    model, tok = transformer(0)
    with torch.no_grad():
        for block in model.blocks:
            block.qkv.weight[:16].zero_()
            block.qkv.bias[:16].zero_()
    text = TEXT[:16 * 40]
    study = inspect_attention(model, tok, text)
    t = np.arange(len(text)) % 16
    for r in study.heads:
        assert r.mean_distance == pytest.approx(float(np.mean(t / 2)), abs=1e-6)
        assert r.near == pytest.approx(float(np.mean(np.minimum(t + 1, NEAR) / (t + 1))), abs=1e-6)
        assert r.partner == pytest.approx(study.partner_uniform, abs=1e-6)
    # Only pairs whose opening the query can see count: within the chunk, here.
    assert 0 < study.pairs < text.count(")") + text.count("]")


def test_what_it_refuses(tmp_path):
    model, tok = transformer(0)
    with pytest.raises(ConfigError, match="--chars must be a whole number from 1 to 200,000"):
        inspect_attention(model, tok, TEXT, chars=0)
    gru = build_model(ModelConfig(cell="gru", vocab_size=tok.vocab_size, hidden_size=8, embedding_size=8))
    with pytest.raises(ConfigError, match="this model is a gru, which has none"):
        inspect_attention(gru, tok, TEXT)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attention")
    corpus = folder / "c.txt"
    corpus.write_text(make_text(6000) + TEXT, encoding="utf-8")
    out = folder / "tr"
    r = runner.invoke(app, ["train", str(corpus), "--model", "transformer", "--hidden-size", "16", "--heads", "2",
                            "--layers", "1", "--memory", "4", "--batch-size", "4", "--seq-len", "16",
                            "--max-steps", "6", "--eval-every", "6", "--sample-length", "0", "--device", "cpu",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    gru = folder / "gru"
    r = runner.invoke(app, ["train", str(corpus), "--hidden-size", "8", "--embedding-size", "8", "--batch-size", "4",
                            "--seq-len", "16", "--max-steps", "2", "--sample-length", "0", "--device", "cpu",
                            "--out", str(gru)])
    assert r.exit_code == 0, r.output
    return out, gru


def test_the_command_reports_every_head_and_writes_json(run, tmp_path):
    tr, gru = run
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    r = runner.invoke(app, ["inspect-attention", str(tr), str(text), "--json", str(tmp_path / "a.json")])
    assert r.exit_code == 0, r.output
    assert "L0.H0" in r.output and "L0.H1" in r.output and "window 16 + memory 4" in r.output
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["schema"] == "charlm.inspect-attention/1" and len(doc["heads"]) == 2 and doc["fidelity"] < 1e-5
    r = runner.invoke(app, ["inspect-attention", str(tr), "--csv", "-"])     # the validation split
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith("layer,head,mean_distance") and len(r.stdout.splitlines()) == 3
    r = runner.invoke(app, ["inspect-attention", str(gru)])
    assert r.exit_code == 1 and "this model is a gru, which has none" in r.stderr
    assert "inspect-cells" in r.stderr
    r = runner.invoke(app, ["inspect-cells", str(tr), "--order", "0"])      # and the other way round
    assert r.exit_code == 1 and "`charlm inspect-attention` reads a transformer's heads" in r.stderr
