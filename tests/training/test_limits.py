"""charlm/limits.py: the memory a model shape needs, checked before torch allocates anything."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from charlm import limits
from charlm.cli import app
from charlm.config import ModelConfig
from charlm.errors import ConfigError
from charlm.limits import check_model_fits, estimate_model_bytes, parameter_count
from charlm.model import CharRNN

runner = CliRunner()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_parameter_count_is_exact(cell, layers):
    c = ModelConfig(cell=cell, vocab_size=37, embedding_size=8, hidden_size=16, layers=layers)
    assert parameter_count(c, 37) == CharRNN(c).num_parameters()


def test_estimate_counts_weights_gradients_adam_and_activations():
    c = ModelConfig(cell="gru", vocab_size=65, embedding_size=8, hidden_size=16)
    params = parameter_count(c, 65)
    assert estimate_model_bytes(c, 65, training=False) == 4 * params
    assert estimate_model_bytes(c, 65) == 16 * params     # weight, gradient, two Adam moments
    with_batch = estimate_model_bytes(c, 65, batch_size=4, seq_len=16)
    assert with_batch > 16 * params
    assert estimate_model_bytes(c, 65, batch_size=8, seq_len=16) - 16 * params == 2 * (with_batch - 16 * params)


@pytest.mark.parametrize("field, value", [("hidden_size", 1_000_000), ("embedding_size", 10**11),
                                          ("layers", 10**9)])
def test_absurd_sizes_are_refused_in_one_line(field, value):
    c = ModelConfig(**{field: value})
    with pytest.raises(ConfigError) as e:
        check_model_fits(c, 65, "cpu")
    msg = str(e.value)
    assert "\n" not in msg and "the model would need about" in msg and "this machine has" in msg
    assert "TB" in msg or "PB" in msg


def test_a_default_model_fits():
    check_model_fits(ModelConfig(), 65, "cpu")
    check_model_fits(ModelConfig(), 65, torch.device("cpu"), batch_size=64, seq_len=256)


def test_the_machine_memory_decides(monkeypatch):
    c = ModelConfig(hidden_size=512)                       # 925,313 parameters, 15 MB to train
    monkeypatch.setattr(limits, "machine_memory", lambda device="cpu": 10_000_000)
    with pytest.raises(ConfigError, match=r"about 15 MB .*925,313 parameters.*this machine has 10 MB"):
        check_model_fits(c, 65, "cpu")
    check_model_fits(c, 65, "cpu", training=False)         # 3.7 MB of weights alone fit


def test_cuda_asks_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1_000_000, 8_000_000_000))
    assert limits.machine_memory("cuda") == 8_000_000_000
    with pytest.raises(ConfigError, match="this GPU has 8.0 GB"):
        check_model_fits(ModelConfig(hidden_size=30_000), 65, torch.device("cuda:0"))


def test_physical_memory_is_known_here():
    have = limits.machine_memory("cpu")
    assert have is not None and have > 100_000_000


@pytest.mark.parametrize("flag, value", [("--hidden-size", "1000000"), ("--embedding-size", str(10**11))])
def test_train_refuses_absurd_flags_before_allocating(tmp_path, corpus_file, monkeypatch, flag, value):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", str(corpus_file), "--out", str(tmp_path / "run"), flag, value,
                            "--max-steps", "1", "--sample-length", "0"])
    assert r.exit_code == 1, r.output
    assert "would need about" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
