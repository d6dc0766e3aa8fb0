"""How much of the past a model uses (charlm.lab.context, `charlm inspect-context`): the shared runs
give exactly what one run per (target, context) gives, and trained models show the context their
data demands: an echo model needs the key D + 1 tokens back, an i.i.d. model needs one token."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from charlm.config import ModelConfig, TrainConfig
from charlm.lab.context import study as context_study
from charlm.lab.context import (SCHEMA, context_grid, first_within, full_history, lattice_targets,
                            measure_context, pair_rows, run_rows, shuffled_history)
from charlm.errors import CharLMError, ConfigError
from charlm.model import CharRNN
from charlm.lab.truncation import CUE, echo_text

from helpers import REPO


def _model(cell: str, layers: int = 2, vocab: int = 12, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(cell=cell, vocab_size=vocab, hidden_size=16, embedding_size=8,
                               layers=layers)).eval()


def _last_loss(model: CharRNN, ids: np.ndarray, target: int, state=None) -> float:
    """The loss of predicting ``target`` after reading ids (1-D) from state: one plain run."""
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(np.asarray(ids, dtype=np.int64))[None], state)
    return float(F.cross_entropy(logits[0, -1:], torch.tensor([int(target)])))


# ----------------------------------------------------------------------------------------------
# The sharing is exact

def test_grid_and_lattice():
    assert context_grid(2048) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    assert context_grid(100)[-2:] == [64, 100]
    pos, g = lattice_targets(100_000, 128, 2048)
    assert len(pos) == 128 and pos[0] >= 2048 and pos[-1] <= 99_999
    assert g & (g - 1) == 0 and np.all(np.diff(pos) == g) and g * 127 > (100_000 - 2048) / 2
    pos, g = lattice_targets(100_000, 96, 2048, widest=512)
    assert g == 512 and abs((pos[0] - 2048) - (99_999 - pos[-1])) <= 1       # centred
    with pytest.raises(CharLMError, match="too few"):
        lattice_targets(1000, 128, 2048)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_shared_runs_score_what_one_run_per_pair_scores(cell):
    model = _model(cell)
    ids = np.random.default_rng(1).integers(0, 12, size=600)
    targets, grid = np.array([70, 86, 102, 118, 300]), [1, 2, 4, 16, 32, 64]   # spacing 16: shared
    rows, starts = pair_rows(ids, targets, grid)
    loss, correct, _, steps = run_rows(model, rows)
    assert steps < len(targets) * sum(grid)                            # rows were shared
    loss = loss.reshape(len(targets), len(grid))
    for i, t in enumerate(targets):
        for j, n in enumerate(grid):
            assert loss[i, j] == pytest.approx(_last_loss(model, ids[t - n:t], ids[t]), abs=1e-5)


def test_shuffle_branches_match_a_run_over_the_shuffled_window():
    model = _model("lstm")
    ids = np.random.default_rng(2).integers(0, 12, size=400)
    targets, dists, far = np.array([100, 250]), [1, 2, 4, 8], 16
    loss, _, _ = shuffled_history(model, ids, targets, dists, far, np.random.default_rng(0))
    again, _, _ = shuffled_history(model, ids, targets, dists, far, np.random.default_rng(0))
    np.testing.assert_array_equal(loss, again)                         # seeded
    # Rebuild target 0's shuffled trunk with the same generator and check one branch by hand.
    rng = np.random.default_rng(0)
    trunk = np.stack([ids[t - far:t] for t in targets])
    for lo, hi in zip(dists, [*dists[1:], far]):
        block = trunk[:, far - hi:far - lo]
        trunk[:, far - hi:far - lo] = np.take_along_axis(block, rng.random(block.shape).argsort(1), 1)
    t, d = targets[0], 4
    window = np.concatenate([trunk[0, :far - d], ids[t - d:t]])
    assert loss[0, dists.index(d)] == pytest.approx(_last_loss(model, window, ids[t]), abs=1e-5)
    assert sorted(trunk[0]) == sorted(ids[t - far:t])                  # the same tokens, reordered


def test_full_history_is_one_stream_reading_the_whole_text():
    model = _model("gru")
    ids = np.random.default_rng(3).integers(0, 12, size=500)
    targets = np.array([50, 130, 210, 290, 370, 450])
    loss, _, _ = full_history(model, ids, targets, lead=10_000, streams=3)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(ids)[None])
    expected = F.cross_entropy(logits[0, targets - 1], torch.from_numpy(ids[targets]), reduction="none")
    np.testing.assert_allclose(loss, expected.numpy(), atol=1e-5)


def test_first_within_and_json_shape():
    assert first_within([1, 2, 4], [2.0, 1.009, 1.0], 1.0, 0.01) == 2
    assert first_within([1, 2, 4], [2.0, 1.5, 1.2], 1.0, 0.01) is None
    study = measure_context(_model("gru", vocab=12), np.random.default_rng(4).integers(0, 12, size=800),
                            targets=8, max_context=64, shuffle_max=16)
    doc = json.loads(json.dumps(study.to_json()))
    assert doc["schema"] == SCHEMA and [p["context"] for p in doc["curve"]] == context_grid(64)
    assert {"context", "loss"} <= set(doc["curve"][0]) and "effective_context" in doc
    assert [p["distance"] for p in doc["perturbation"]["shuffle"]] == [1, 2, 4, 8, 16]
    # The shuffle curve's last point (nothing left to shuffle) is the context curve's reading.
    assert doc["perturbation"]["shuffle"][-1]["loss"] == doc["curve"][4]["loss"]
    assert doc["cost"]["token_steps_per_target"] < doc["cost"]["naive_token_steps_per_target"]
    assert len(study.csv_text().splitlines()) == 1 + len(doc["curve"]) * 2 + 5


# ----------------------------------------------------------------------------------------------
# Known answers from trained models

def _train(tmp: Path, name: str, text: str, steps: int, hidden: int = 32, seq_len: int = 16) -> Path:
    from charlm.training import train
    from charlm.threads import torch_threads

    corpus = tmp / f"{name}.txt"
    corpus.write_text(text, encoding="utf-8")
    config = TrainConfig(corpus=str(corpus), seq_len=seq_len, batch_size=32, lr=1e-2, warmup_steps=10,
                         max_steps=steps, eval_every=steps, val_fraction=0.05, out=str(tmp / name),
                         force=True, seed=0, device="cpu", sample_length=0)
    # One thread also for module-scoped fixtures, which run before conftest's autouse one_thread.
    with torch_threads(1):
        return train(config, ModelConfig(cell="gru", hidden_size=hidden, embedding_size=8))


@pytest.fixture(scope="module")
def echo_run(tmp_path_factory) -> Path:
    """A tiny GRU that solved the echo task at D = 2 (key, filler, cue, echo: the key is 3 back)."""
    return _train(tmp_path_factory.mktemp("echo"), "echo", echo_text(2, records=20_000, keys=4), steps=200)


@pytest.fixture(scope="module")
def echo_lm(echo_run):
    import charlm

    return charlm.load(echo_run, device="cpu")


def _echo_positions(text: str, first: int) -> list[int]:
    return [i + 1 for i, ch in enumerate(text[:-1]) if ch == CUE and i + 1 >= first]


def _check_echo_model(run: Path, distance: int) -> None:
    import charlm

    lm = charlm.load(run, device="cpu")
    text = echo_text(distance, records=400, keys=4, seed=7)
    ids = lm.tokenizer.encode(text)
    study = measure_context(lm.model, ids, positions=_echo_positions(text, 32)[:150], max_context=32,
                            shuffle_max=0)
    acc = {p["context"]: p["accuracy"] for p in study.curve}
    rep = {p["distance"]: p["accuracy"] for p in study.replace}
    need = distance + 1                                                # the key is D + 1 tokens back
    assert study.full_accuracy > 0.9
    for n in acc:
        if n < need:      # the key is out of sight (gone, or replaced): chance is 1/4
            assert acc[n] < 0.6 and rep[n] < 0.6, (n, acc, rep)
        else:
            assert acc[n] > 0.9 and rep[n] > 0.9, (n, acc, rep)
    # Over all positions (lattice targets), the effective context reaches back to the key.
    overall = context_study(lm, text=text, targets=64, max_context=64, shuffle_max=16, grad_lags=20,
                                 grad_samples=4)
    assert overall.effective_context is not None and overall.effective_context >= need
    assert overall.chunk_length == 16 and overall.model["gradient_lags"] == 20


def test_echo_model_needs_the_key_and_loses_it_when_replaced(echo_run):
    _check_echo_model(echo_run, 2)


@pytest.mark.slow
def test_echo_model_at_distance_eight(tmp_path):
    run = _train(tmp_path, "echo8", echo_text(8, records=20_000, keys=4), steps=800, hidden=64)
    _check_echo_model(run, 8)


def test_iid_model_uses_one_token(tmp_path):
    rng = np.random.default_rng(0)
    p = np.array([0.4, 0.2, 0.15, 0.1, 0.08, 0.07])                   # skewed, so there is something to learn
    text = "".join(rng.choice(list("abcdef"), size=30_000, p=p))
    import charlm

    lm = charlm.load(_train(tmp_path, "iid", text, steps=400), device="cpu")
    study = context_study(lm, text=text[-8000:], targets=64, max_context=256, grad_lags=0)
    # A zero state is out of the ordinary for a trained model, so n = 1 costs a little (a few
    # hundredths of a nat after 400 steps); from n = 2 on nothing is left to gain.
    assert study.effective_context is not None and study.effective_context <= 2
    assert study.full_loss < 1.02 * float(-(p * np.log(p)).sum())      # it learned the frequencies
    assert study.replace_horizon is not None and study.replace_horizon <= 2


# ----------------------------------------------------------------------------------------------
# The command

def test_cli_json_csv_plot_and_table(echo_run, tmp_path, monkeypatch):
    from charlm.cli import app

    monkeypatch.chdir(tmp_path)
    text = tmp_path / "held-out.txt"
    text.write_text(echo_text(2, records=600, keys=4, seed=3), encoding="utf-8")
    args = ["inspect-context", str(echo_run), str(text), "--targets", "16", "--max-context", "32",
            "--shuffle-max", "8", "--grad-lags", "10"]
    res = CliRunner().invoke(app, args + ["--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == SCHEMA and doc["effective_context"] >= 3
    assert doc["model"]["chunk_length"] == 16 and doc["settings"]["targets"] == 16
    res = CliRunner().invoke(app, args + ["--csv", "c.csv"])
    assert res.exit_code == 0, res.output
    assert "trained with k = 16" in res.stdout and "effective context" in res.stdout
    assert (tmp_path / "c.csv").read_text().startswith("kind,distance,loss")
    pytest.importorskip("matplotlib")
    res = CliRunner().invoke(app, args + ["--plot", "c.png"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_are_one_line(echo_run, tmp_path):
    from charlm.cli import app

    short = tmp_path / "short.txt"
    short.write_text("A>A\n" * 20, encoding="utf-8")
    res = CliRunner().invoke(app, ["inspect-context", str(echo_run), str(short)])
    assert res.exit_code == 1 and "too few" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["inspect-context", str(echo_run), str(short), "--tolerance", "-1"])
    assert res.exit_code == 1 and "--tolerance" in res.output


def test_python_dash_m_json_to_stdout(echo_run, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(echo_text(2, records=300, keys=4, seed=4), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "charlm", "inspect-context", str(echo_run), str(text),
                          "--targets", "8", "--max-context", "16", "--grad-lags", "0", "--json", "-"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["schema"] == SCHEMA


@pytest.mark.parametrize("seed", ["-1", "18446744073709551616"])
def test_cli_seed_out_of_range_is_one_line(echo_run, seed):
    from charlm.cli import app

    res = CliRunner().invoke(app, ["inspect-context", str(echo_run), "--seed", seed, "--grad-lags", "5",
                                   "--max-context", "8", "--targets", "4"])
    assert res.exit_code == 1, res.output
    assert "--seed must be a whole number from 0 to 2**63 - 1" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == ""


@settings(max_examples=25, deadline=None)
@given(option=st.sampled_from(["max_context", "targets", "shuffle_max", "tolerance", "seed", "grad_lags"]),
       value=st.one_of(st.text(max_size=3), st.none(), st.booleans(), st.floats(allow_nan=True),
                       st.lists(st.integers(), max_size=2), st.integers(max_value=-1)))
def test_study_options_of_a_wrong_type_are_one_line(echo_lm, option, value):
    if option == "tolerance" and isinstance(value, float) and value >= 0 and value == value and value != float("inf"):
        return   # a finite tolerance >= 0 is a right one
    with pytest.raises(ConfigError) as e:
        context_study(echo_lm, text="x", **{option: value})
    assert "\n" not in str(e.value) and f"--{option.replace('_', '-')}" in str(e.value)


def test_a_transformer_uses_nothing_beyond_its_window_and_memory():
    """Read as it generates, a transformer (window 8 + memory 4) sees at most 12 tokens: every
    reading with a longer context is exactly the full-history one, and the shared rows score what
    one plain read per (target, n) scores."""
    from charlm.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(cell="transformer", vocab_size=12, hidden_size=16, heads=2, layers=2,
                                    memory=4, window=8).validate()).eval()
    ids = np.random.default_rng(5).integers(0, 12, size=900)
    study = measure_context(model, ids, targets=12, max_context=64, shuffle_max=32)
    full = study.full_loss
    for p in study.curve:
        if p["context"] >= 12:
            assert p["loss"] == pytest.approx(full, abs=1e-4)      # float32 rounding only
    assert study.effective_context is not None and study.effective_context <= 16
    assert all(abs(p["increase"]) < 1e-4 for p in study.replace if p["distance"] >= 12)
    targets, grid = np.array([70, 86, 102]), [1, 4, 16]
    rows, _ = pair_rows(ids, targets, grid)
    loss, _, _, _ = run_rows(model, rows)
    for i, t in enumerate(targets):
        for j, n in enumerate(grid):
            with torch.no_grad():
                logits, _ = model.read(torch.from_numpy(ids[t - n:t])[None], model.step_state(1))
            want = float(F.cross_entropy(logits[0, -1:], torch.tensor([int(ids[t])])))
            assert loss[i * len(grid) + j] == pytest.approx(want, abs=1e-5)


def _own_options(command: str) -> set[str]:
    """The --options a charlm command has, as its click command lists them."""
    import typer

    from charlm.cli import app

    group = typer.main.get_command(app)
    return {opt for p in group.commands[command].params for opt in p.opts if opt.startswith("--")}


@settings(max_examples=25, deadline=None)
@given(grad_lags=st.sampled_from([0, 1, 40, 1000, 10**6]), max_context=st.sampled_from([1, 8, 64, 10**6]),
       targets=st.sampled_from([1, 2, 96, 10**6]), shuffle_max=st.sampled_from([0, 4, 10**6]),
       text=st.sampled_from(["short", "none"]))
def test_every_error_of_inspect_context_names_its_own_options(echo_run, tmp_path_factory, grad_lags,
                                                              max_context, targets, shuffle_max, text):
    """Errors that come from code inspect-context shares with inspect-gradients (was: "lower --lags
    or give a longer --corpus", options inspect-context does not have): every --option an error
    names is one of the command's own."""
    from charlm.cli import app

    short = tmp_path_factory.mktemp("text") / "short.txt"
    short.write_text("A>A\n" * 60, encoding="utf-8")
    args = ["inspect-context", str(echo_run), *([str(short)] if text == "short" else []),
            "--grad-lags", str(grad_lags), "--max-context", str(max_context), "--targets", str(targets),
            "--shuffle-max", str(shuffle_max), "--json", str(tmp_path_factory.mktemp("out") / "c.json")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code in (0, 1) and "Traceback" not in res.output, res.output
    if res.exit_code == 1:
        named = set(re.findall(r"--[a-z][a-z-]*", res.stderr))
        assert named <= _own_options("inspect-context"), res.stderr
