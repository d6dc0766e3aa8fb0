"""Gradient through time (charlm.lab.gradients, `charlm inspect-gradients`): the measured curves agree
with what analysis and the fused module say they must be."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import torch.nn.functional as F

from charlm.config import ModelConfig
from charlm.errors import CharLMError
from charlm.lab.gradients import study as gradient_study
from charlm.lab.gradients import (SCHEMA, horizon_summary, inspect_gradients, measure_model, plot_study,
                              spectral_report, summarize, trace_gradients, unrolled)
from charlm.model import CharRNN


def _sum_loss(h_last: torch.Tensor) -> torch.Tensor:
    return h_last.sum(-1)


def test_one_unit_tanh_rnn_matches_the_product_of_jacobians():
    # h_t = tanh(u x_t + w h_{t-1} + b), L = h_T:  dL/dh_t = prod_{s=t+1..T} w * (1 - h_s^2)
    torch.manual_seed(0)
    rnn = nn.RNN(1, 1, batch_first=True).double()
    with torch.no_grad():
        rnn.weight_hh_l0.fill_(0.9)
        rnn.weight_ih_l0.fill_(0.7)
    x = torch.randn(3, 30, 1, dtype=torch.float64)
    trace = trace_gradients(rnn, x, _sum_loss)
    measured = trace.norms[(0, "h")]                                      # (T, B)
    with torch.no_grad():
        h = rnn(x)[0][..., 0].T                                           # (T, B) from the fused module
    T = h.size(0)
    expected = torch.ones_like(h)
    for t in range(T - 2, -1, -1):
        expected[t] = expected[t + 1] * 0.9 * (1 - h[t + 1] ** 2)
    torch.testing.assert_close(measured, expected.abs(), rtol=1e-10, atol=0)


def test_contractive_tanh_rnn_falls_ten_fold_every_four_lags():
    torch.manual_seed(1)
    rnn = nn.RNN(8, 32, batch_first=True).double()
    with torch.no_grad():
        w = rnn.weight_hh_l0
        w.mul_(0.5 / torch.linalg.matrix_norm(w, ord=2))                  # spectral norm 0.5
    trace = trace_gradients(rnn, torch.randn(16, 41, 8, dtype=torch.float64), _sum_loss)
    curve = summarize(trace.norms[(0, "h")], 0, "h")
    g = np.array(curve.gmean)
    assert np.all(g[4:] <= g[:-4] / 10)
    assert curve.decay_per_step < 0.5 and not curve.explodes
    assert curve.horizon is not None and curve.horizon <= 10
    (spec,) = spectral_report(rnn)
    assert spec["sigma_max"] == pytest.approx(0.5) and spec["condition"] == "met"


def test_relu_rnn_with_growing_recurrence_is_reported_exploding():
    rnn = nn.RNN(4, 6, nonlinearity="relu", batch_first=True).double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(1.5 * torch.eye(6))
        rnn.weight_ih_l0.uniform_(0.1, 0.5)                               # positive inputs, weights and
        rnn.bias_ih_l0.fill_(0.1)                                         # biases: every unit stays in
        rnn.bias_hh_l0.zero_()                                            # relu's linear part
    x = torch.rand(5, 21, 4, dtype=torch.float64)
    trace = trace_gradients(rnn, x, _sum_loss)
    curve = summarize(trace.norms[(0, "h")], 0, "h")
    ratios = np.array(curve.gmean[1:]) / np.array(curve.gmean[:-1])
    np.testing.assert_allclose(ratios, 1.5, rtol=1e-9)
    assert curve.decay_per_step == pytest.approx(1.5, rel=1e-6)
    assert curve.explodes and curve.horizon is None
    assert spectral_report(rnn)[0]["condition"] == "not met"


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "mingru", "minlstm"])
def test_unrolled_module_equals_the_fused_one(cell):
    """Same outputs, same input gradients at every step, and the same gradient at lag 0 as
    autograd gives on the fused module (for minGRU/minLSTM: the parallel scan); the fused output
    tensor shows none at earlier steps."""
    torch.manual_seed(2)
    model = CharRNN(ModelConfig(cell=cell, vocab_size=11, embedding_size=5, hidden_size=7, layers=2)).double()
    model.eval()
    x = torch.randn(3, 9, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 4, 7])
    out, _ = model.rnn(x)                                                 # fused (B, T, H)
    out.retain_grad()
    loss = nn.functional.cross_entropy(model.head(out[:, -1]), target, reduction="sum")
    loss.backward()
    fused_dx, fused_dout = x.grad.clone(), out.grad.clone()

    x2 = x.detach().clone().requires_grad_(True)
    steps, top = unrolled(model.rnn, x2)
    torch.testing.assert_close(top, out.detach(), rtol=1e-10, atol=1e-12)
    loss2 = nn.functional.cross_entropy(model.head(top[:, -1]), target, reduction="sum")
    dx, dh_last = torch.autograd.grad(loss2, [x2, steps[-1][-1][0]])
    torch.testing.assert_close(dx, fused_dx, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(dh_last, fused_dout[:, -1], rtol=1e-10, atol=1e-12)
    # Why the unrolling is needed: the fused output tensor carries no gradient to earlier steps.
    assert float(fused_dout[:, :-1].abs().max()) == 0.0

    ids = torch.randint(0, 11, (3, 12))
    curves, _ = measure_model(model, ids, warmup=2)
    top_h = next(c for c in curves if c.layer == 1 and c.state == "h")
    assert all(v > 0 for v in top_h.gmean[:5])


def test_fresh_tanh_rnn_forgets_sooner_than_lstm():
    study = inspect_gradients(models=["rnn", "lstm"], hidden_size=64, embedding_size=16, lags=80,
                              samples=8, warmup=10)
    rnn, lstm = study.models
    h_rnn = rnn.curves[0].horizon
    h_lstm = next(c for c in lstm.curves if c.state == "h").horizon
    assert h_rnn is not None and (h_lstm is None or h_rnn < h_lstm)
    assert rnn.curves[0].decay_per_step < lstm.curves[0].decay_per_step
    assert {c.state for c in lstm.curves} == {"h", "c"}


def test_json_schema_is_stable(tmp_path):
    study = inspect_gradients(models=["gru", "lstm"], hidden_size=8, embedding_size=4, layers=2, lags=12,
                              samples=3, warmup=0)
    doc = json.loads(json.dumps(study.to_json()))
    json.dumps(doc, allow_nan=False)                                     # strict JSON: no NaN
    assert doc["schema"] == SCHEMA
    assert set(doc) == {"schema", "settings", "models"}
    assert set(doc["settings"]) == {"lags", "samples", "seed", "warmup", "inputs", "dtype", "aggregate",
                                    "horizon_ratio"}
    m = doc["models"][1]
    assert set(m) == {"name", "cell", "source", "hidden_size", "layers", "embedding_size", "vocab_size",
                      "chunk_length", "loss", "curves", "spectral"}
    assert len(m["curves"]) == 4                                          # 2 layers x (h, c)
    assert set(m["curves"][0]) == {"layer", "state", "lags", "gmean", "p10", "p90", "relative",
                                   "decay_per_step", "log10_slope", "horizon", "explodes"}
    assert len(m["curves"][0]["gmean"]) == 13 and m["curves"][0]["relative"][0] == 1.0
    assert set(m["spectral"][0]) == {"layer", "matrix", "block", "nonlinearity", "sigma_max", "gamma",
                                     "bound", "below_bound", "condition"}
    assert [s["block"] for s in m["spectral"][:4]] == ["input", "forget", "cell", "output"]
    lines = study.csv_text().splitlines()
    assert lines[0].startswith("model,cell,layer,state,lag,gmean,p10,p90,relative")
    assert len(lines) == 1 + 13 * (2 + 4)                                 # gru 2 curves, lstm 4


def test_plot_written_and_clean_message_without_matplotlib(tmp_path, monkeypatch):
    study = inspect_gradients(models=["rnn"], hidden_size=8, embedding_size=4, lags=10, samples=2, warmup=0)
    pytest.importorskip("matplotlib")
    for name in ("g.png", "g.svg"):
        plot_study(study, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000
    monkeypatch.setitem(sys.modules, "matplotlib", None)                  # import now fails
    with pytest.raises(CharLMError, match=r"pip install 'charlm\[plot\]'"):
        plot_study(study, tmp_path / "h.png")


def test_horizon_summary_on_a_training_chunk():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell="lstm", vocab_size=9, embedding_size=4, hidden_size=6))
    x = torch.randint(0, 9, (5, 16))
    state = model.init_state(5)
    before = [p.clone() for p in model.parameters()]
    out = horizon_summary(model, x, x, state)
    assert out["lags"] == 15 and set(out) >= {"h[0]", "c[0]", "decay_h[0]"}
    assert all(p.grad is None for p in model.parameters())               # training state untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_training_needs_the_probe_the_lab_provides(tmp_path):
    """The trainer does not import the lab: a gradient report without a probe is refused before
    anything is written."""
    from charlm.config import TrainConfig
    from charlm.errors import ConfigError
    from charlm.training import train

    with pytest.raises(ConfigError, match="grad_probe"):
        train(TrainConfig(corpus="x.txt", max_steps=1, grad_report_every=2, out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_cli_api_and_training_report(tmp_path):
    import charlm
    from charlm.cli import app
    from charlm.metrics import read_metrics
    from charlm.config import TrainConfig
    from charlm.training import train

    runner = CliRunner()
    out = tmp_path / "fresh.json"
    r = runner.invoke(app, ["inspect-gradients", "--models", "rnn,gru", "--hidden-size", "8", "--lags", "20",
                            "--samples", "3", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "horizon" in r.output and "rnn h" in r.output
    assert [m["name"] for m in json.loads(out.read_text())["models"]] == ["rnn", "gru"]

    # One tiny training run serves three checks: --grad-report-every, the CLI and the Python API.
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 60)
    run = train(TrainConfig(corpus=str(corpus), seq_len=12, batch_size=4, max_steps=4, eval_every=4,
                            grad_report_every=2, out=str(tmp_path / "run"), sample_length=0, device="cpu"),
                ModelConfig(cell="lstm", hidden_size=8, embedding_size=4), grad_probe=horizon_summary)
    reports = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "grad_report"]
    assert [r["step"] for r in reports] == [2, 4]
    assert reports[0]["horizons"]["lags"] == 11 and {"h[0]", "c[0]"} <= set(reports[0]["horizons"])

    lm = charlm.load(run, device="cpu")
    study = gradient_study(lm, text="to be or not to be " * 20, lags=15, samples=3, warmup=5)
    (m,) = study.models
    assert m.chunk_length == 12 and [c.state for c in m.curves] == ["h", "c"]
    assert len(m.curves[0].gmean) == 16 and study.inputs == "text given"

    out = tmp_path / "ck.json"
    r = runner.invoke(app, ["inspect-gradients", str(run), "--lags", "30", "--samples", "3", "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["models"][0]["chunk_length"] == 12 and doc["settings"]["inputs"].startswith("text:")
    assert "k=12" in r.output

    r = runner.invoke(app, ["inspect-gradients", "--models", "rnn,transformers"])
    assert r.exit_code == 1 and "unknown cell" in r.output



@pytest.mark.slow
def test_issue_command_is_fast_and_shows_the_rnn_forgetting_first():
    """`charlm inspect-gradients --models rnn,lstm,gru --lags 200`: under 30 s on 2 cores."""
    import time

    t0 = time.perf_counter()
    study = inspect_gradients(models=["rnn", "lstm", "gru"], lags=200)
    assert time.perf_counter() - t0 < 30
    horizon = {(m.name, c.state): c.horizon for m in study.models for c in m.curves}
    assert horizon[("rnn", "h")] * 2 <= horizon[("lstm", "h")]
    assert horizon[("rnn", "h")] * 3 <= horizon[("lstm", "c")]


def test_plot_limits_hold_every_curve_however_far_it_falls(tmp_path):
    from charlm.lab.gradients import _plot_limits

    study = inspect_gradients(models=["rnn"], hidden_size=8, embedding_size=4, lags=10, samples=2, warmup=0)
    curve = study.models[0].curves[0]
    curve.relative = [1.0] + [10.0 ** (-8 * i) for i in range(1, len(curve.relative))]   # down to 1e-72
    lo, hi = _plot_limits(study)
    assert lo <= min(curve.relative) and hi >= 1.0
    pytest.importorskip("matplotlib")
    plot_study(study, tmp_path / "g.svg")
    svg = (tmp_path / "g.svg").read_text()
    assert "rnn" in svg     # the title names the model


def test_a_transformer_gradient_stops_at_its_window_and_matches_autograd_inside():
    """One layer, window 8, memory 4: the measured ||dL/dx_t|| of the last chunk's last loss equals
    autograd through one long forward under the chunked mask for lags < 8, and is exactly zero from
    lag 8 on (the memory is read in the forward pass only), so beyond window + memory too."""
    from charlm.lab.gradients import measure_transformer
    from charlm.model import build_model
    from charlm.transformer import rotary

    torch.manual_seed(0)
    W, M, V = 8, 4, 9
    model = build_model(ModelConfig(cell="transformer", vocab_size=V, hidden_size=8, heads=2, layers=1,
                                    memory=M, window=W).validate()).double().eval()
    ids = torch.randint(0, V, (1, 3 * W + 1), generator=torch.Generator().manual_seed(1))
    curves, _ = measure_transformer(model, ids, warmup=0)
    measured = torch.tensor(curves[0].gmean, dtype=torch.float64)                           # by lag, 0 .. 3W - 1
    assert (measured[W:] < 1e-300).all() and (measured[:W] > 1e-12).all()   # zero: floored at the smallest float

    x, N = ids[:, :-1], 3 * W
    emb = model.embed(x).detach().requires_grad_(True)
    p, q = torch.arange(N)[:, None], torch.arange(N)[None]
    allowed = (q <= p) & (q >= (p // W) * W - M)
    cos, sin = rotary(N, 4, emb.device, torch.float64)
    empty = emb.new_zeros(1, 0, 8)
    h, _, _ = model.blocks[0](emb, empty, empty, allowed[None, None], cos, sin)
    F.cross_entropy(model.head(model.norm(h[:, -1])), ids[:, -1]).backward()
    want = emb.grad[0].norm(dim=-1).flip(0)                              # by lag
    torch.testing.assert_close(measured[:W], want[:W], rtol=1e-9, atol=0)
    assert (want[W:W + M] > 0).all()          # the long forward reaches into the memory; training does not


def test_inspect_gradients_compares_a_fresh_transformer_with_the_cells():
    study = inspect_gradients(models=["gru", "transformer"], hidden_size=16, embedding_size=8, lags=80,
                              samples=2, warmup=0)
    tr = study.models[1]
    assert tr.cell == "transformer" and tr.chunk_length == 64 and tr.spectral == []
    assert [c.label for c in tr.curves] == ["x[0]"]
    assert tr.curves[0].horizon is not None and tr.curves[0].horizon <= 64
    assert all(v < 1e-300 for v in tr.curves[0].gmean[64:])          # zero (floored at the smallest float)
