"""minGRU and minLSTM (charlm/mincells.py): the parallel scan computes exactly the step-by-step
recurrence, across chunk borders with a carried state; the models train, save, load, resume and
sample like the other cells; and the gradient through time is the product of (1 - z)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import charlm
from charlm.checkpoint import load_checkpoint
from charlm.config import ModelConfig, TrainConfig
from charlm.lab.gradients import inspect_gradients, measure_model, spectral_report, trace_gradients, unrolled
from charlm.metrics import read_metrics
from charlm.mincells import MinRNN, g, log_g, scan
from charlm.model import CharRNN
from charlm.training import train
from helpers import make_text, stop_after, tiny_config

CELLS = ["mingru", "minlstm"]


def keep_gate(cell: str, pre: torch.Tensor, H: int) -> torch.Tensor:
    """a_t written from the paper's definitions, independently of the module's log-space code."""
    if cell == "mingru":
        return 1 - torch.sigmoid(pre[..., :H])                            # 1 - z
    f, i = torch.sigmoid(pre[..., :H]), torch.sigmoid(pre[..., H:2 * H])
    return f / (f + i)                                                    # f'


def test_g_is_the_papers_activation_and_log_g_its_log():
    x = torch.linspace(-40, 40, 801, dtype=torch.float64)
    want = torch.where(x >= 0, x + 0.5, 1 / (1 + torch.exp(-x)))
    torch.testing.assert_close(g(x), want, rtol=1e-15, atol=0)
    torch.testing.assert_close(log_g(x), torch.log(want), rtol=1e-12, atol=1e-300)
    x.requires_grad_(True)
    log_g(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_scan_solves_the_linear_recurrence():
    torch.manual_seed(0)
    a, b = torch.rand(2, 300, 3, dtype=torch.float64), torch.rand(2, 300, 3, dtype=torch.float64) * 5
    h0 = torch.randn(2, 3, dtype=torch.float64)            # any sign: h_0 is a linear term
    h, want = h0, []
    for t in range(300):
        h = a[:, t] * h + b[:, t]
        want.append(h)
    torch.testing.assert_close(scan(a.log(), b.log(), h0), torch.stack(want, 1), rtol=1e-11, atol=1e-12)


def _run_chunks(rnn: MinRNN, x: torch.Tensor, h0: torch.Tensor, sizes: list[int]):
    """The parallel form chunk after chunk, the state carried (and not detached: the gradient
    must cross the borders too). T = 1 chunks take the one-step path."""
    outs, h, start = [], h0, 0
    for n in sizes:
        out, h = rnn(x[:, start:start + n], h)
        outs.append(out)
        start += n
    return torch.cat(outs, 1), h


@pytest.mark.parametrize("cell", CELLS)
def test_parallel_scan_equals_the_step_by_step_recurrence(cell):
    """Outputs, final state and gradients (inputs, carried state, every weight) in float64."""
    torch.manual_seed(1)
    rnn = MinRNN(cell, 5, 7, num_layers=2).double().eval()
    x = torch.randn(3, 24, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.rand(2, 3, 7, dtype=torch.float64, requires_grad=True)   # a carried state
    w_out, w_state = torch.randn(3, 24, 7, dtype=torch.float64), torch.randn(2, 3, 7, dtype=torch.float64)
    leaves = [x, h0, *rnn.parameters()]

    h, outs = list(h0), []
    for t in range(24):
        y, h = rnn.step(x[:, t], h)
        outs.append(y)
    seq_out, seq_h = torch.stack(outs, 1), torch.stack(h)
    seq_grads = torch.autograd.grad((seq_out * w_out).sum() + (seq_h * w_state).sum(), leaves)

    par_out, par_h = _run_chunks(rnn, x, h0, [8, 1, 15])                 # two chunk borders
    par_grads = torch.autograd.grad((par_out * w_out).sum() + (par_h * w_state).sum(), leaves)

    torch.testing.assert_close(par_out, seq_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(par_h, seq_h, rtol=1e-10, atol=1e-12)
    for a, b in zip(par_grads, seq_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cell", CELLS)
def test_zero_state_and_no_state_agree_and_keep_finite_gradients(cell):
    # A fresh state is exactly zero: log 0 would be -inf, so h_0 enters the scan as a linear term.
    torch.manual_seed(2)
    rnn = MinRNN(cell, 4, 6).double()
    x = torch.randn(2, 10, 4, dtype=torch.float64)
    h0 = torch.zeros(1, 2, 6, dtype=torch.float64, requires_grad=True)
    out, h = rnn(x, h0)
    out.sum().backward()
    torch.testing.assert_close(out, rnn(x)[0], rtol=0, atol=0)
    assert torch.isfinite(h0.grad).all() and h0.grad.abs().sum() > 0


@pytest.mark.parametrize("cell", CELLS)
def test_float32_scan_stays_close_over_long_chunks_with_saturated_gates(cell):
    torch.manual_seed(3)
    rnn = MinRNN(cell, 8, 16).double()
    with torch.no_grad():
        rnn.cells[0].linear.weight.mul_(8)                               # gates near 0 and 1, g large
    x = torch.randn(2, 1024, 8, dtype=torch.float64)
    h, want = torch.zeros(2, 16, dtype=torch.float64), []
    with torch.no_grad():
        for t in range(1024):
            _, (h,) = rnn.step(x[:, t], [h])
            want.append(h)
        got = rnn.float()(x.float())[0]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), torch.stack(want, 1), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_generation_step_matches_forward(cell):
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell=cell, vocab_size=11, embedding_size=8, hidden_size=16, layers=2)).eval()
    ids = torch.randint(0, 11, (3, 7))
    with torch.no_grad():
        _, state = model(ids[:, :2])
        want, _ = model(ids[:, 2:], state)
        one, _ = model(ids[:, 2:3], state)                               # forward with T = 1
    step, s = model.stepper(), model.split_state(state)
    got = []
    for t in range(2, 7):
        out, s = step(ids[:, t], s)
        got.append(out)
    assert not got[-1].requires_grad                                     # no graph kept while sampling
    torch.testing.assert_close(torch.stack(got, 1), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one[:, 0], want[:, 0], rtol=1e-5, atol=1e-5)
    _, full = model(ids)
    torch.testing.assert_close(model.join_state(s)[0], full[0], rtol=1e-5, atol=1e-5)


def _tiny(corpus, out, **kw) -> TrainConfig:
    return tiny_config(corpus, out, **{**dict(lr=1e-2, max_steps=60, eval_every=30, seed=3), **kw})


@pytest.mark.parametrize("cell", CELLS)
def test_tiny_model_learns_saves_loads_and_samples(tmp_path, corpus_file, cell):
    run = train(_tiny(corpus_file, tmp_path / "run"),
                ModelConfig(cell=cell, embedding_size=8, hidden_size=16, layers=2))
    records = read_metrics(run / "metrics.jsonl")
    chunks = [r["loss"] for r in records if r["type"] == "chunk"]
    first, last = sum(chunks[:5]) / 5, sum(chunks[-5:]) / 5
    assert last < first - 0.8, (first, last)
    val = [r["val_loss"] for r in records if r["type"] == "eval"]
    assert val[-1] < math.log(16)

    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["model_config"]["cell"] == cell
    (h,) = ck["hidden_state"][0]
    assert h.shape == (2, 4, 16) and h.dtype == torch.float32
    lm = charlm.load(run, device="cpu")
    assert lm.config.cell == cell
    text = lm.sample(prime="the ", length=40, seed=1)
    assert len(text) == 40 and text == lm.sample(prime="the ", length=40, seed=1)
    assert lm.evaluate(make_text(800, seed=5)).loss == pytest.approx(val[-1], rel=0.25)


def test_exact_resume_matches_uninterrupted(tmp_path):
    """The carried state enters the scan, so a resumed minGRU run is the uninterrupted one, bit for bit."""
    corpus = tmp_path / "small.txt"
    corpus.write_text(make_text(900, seed=1), encoding="utf-8")
    model = ModelConfig(cell="mingru", embedding_size=8, hidden_size=8, layers=2, dropout=0.1)
    full, part = tmp_path / "full", tmp_path / "part"
    cfg = dict(seq_len=8, max_steps=40, eval_every=10, warmup_steps=5)
    train(_tiny(corpus, full, **cfg), model)
    train(_tiny(corpus, part, **cfg), model, should_stop=stop_after(23))
    train(_tiny(corpus, part, resume=True, **cfg), None)
    chunk = lambda run: [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if r["type"] == "chunk"]
    assert chunk(part) == chunk(full) and len(chunk(full)) == 40
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["hidden_state"][0][0], b["hidden_state"][0][0])


# ----------------------------------------------------------------------------------------------
# Gradient through time: one layer's dh_T/dh_t is diagonal, the product of a_s = (1 - z_s).

@pytest.mark.parametrize("cell", CELLS)
def test_gradient_through_time_is_the_product_of_one_minus_z(cell):
    torch.manual_seed(4)
    H, T = 12, 40
    model = CharRNN(ModelConfig(cell=cell, vocab_size=9, embedding_size=6, hidden_size=H)).double().eval()
    ids = torch.randint(0, 9, (5, T + 1))
    x, target = ids[:, :-1], ids[:, -1]
    emb = model.embed(x).detach()                                        # (B, T, E)
    h0 = torch.rand(1, 5, H, dtype=torch.float64)                        # a carried state

    def loss_fn(h_last):
        return F.cross_entropy(model.head(h_last), target, reduction="none")

    steps, top = unrolled(model.rnn, emb, (h0,))
    hs = [s[0][0] for s in steps]                                        # h_t (B, H), t = 0..T-1
    grads = torch.autograd.grad(loss_fn(top[:, -1]).sum(), hs)
    with torch.no_grad():
        a = keep_gate(cell, model.rnn.cells[0].linear(emb), H)           # (B, T, H)
        # dL/dh_t = dL/dh_(T-1) * prod_{s=t+1..T-1} a_s, elementwise
        expected = [grads[-1]]
        for t in range(T - 2, -1, -1):
            expected.insert(0, expected[0] * a[:, t + 1])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-300)

    # The same numbers through trace_gradients (the norms inspect-gradients aggregates) ...
    trace = trace_gradients(model.rnn, emb, loss_fn, state=(h0,))
    want_norms = torch.stack([e.norm(dim=-1) for e in expected])         # (T, B)
    torch.testing.assert_close(trace.norms[(0, "h")], want_norms, rtol=1e-12, atol=1e-300)
    # ... and through measure_model's curve on a fresh model, from its own zero state.
    curves, _ = measure_model(model, ids, warmup=0)
    (curve,) = curves
    with torch.no_grad():
        h_T = model.rnn(emb)[0][:, -1]
    h_T.requires_grad_(True)
    (g_T,) = torch.autograd.grad(loss_fn(h_T).sum(), h_T)
    prods = torch.cat([a[:, 1:].flip(1).cumprod(1).flip(1), torch.ones(5, 1, H, dtype=torch.float64)], 1)
    norms = (g_T.unsqueeze(1) * prods).norm(dim=-1)                      # (B, T) by time
    gmean = np.exp(np.log(norms.flip(1).numpy()).mean(axis=0))           # by lag
    np.testing.assert_allclose(curve.gmean, gmean, rtol=1e-10)
    assert spectral_report(model.rnn) == []                              # no recurrent matrix


def test_inspect_gradients_compares_min_cells_with_the_gru():
    study = inspect_gradients(models=["gru", "mingru", "minlstm"], hidden_size=16, embedding_size=8,
                              layers=2, lags=20, samples=3, warmup=5)
    assert [m.name for m in study.models] == ["gru", "mingru", "minlstm"]
    for m in study.models[1:]:
        assert [(c.layer, c.state) for c in m.curves] == [(0, "h"), (1, "h")]
        assert m.spectral == [] and all(v > 0 for c in m.curves for v in c.gmean)
        # a fresh gate z ~ 0.5: the gradient falls geometrically, never grows
        assert all(c.decay_per_step < 1 and not c.explodes for c in m.curves)
