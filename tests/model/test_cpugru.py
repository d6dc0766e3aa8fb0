"""The CPU training path for GRUs (charlm/cpugru.py) computes exactly what nn.GRU computes: outputs,
final state and every gradient, in float64, with a carried state, stacked layers, dropout off, and
masked hidden weights (weight drop); and the model uses it only where it applies."""

from __future__ import annotations

import pytest
import torch

from charlm import cpugru
from charlm.config import ModelConfig
from charlm.model import CharRNN


def _pair(layers: int, E: int = 5, H: int = 7):
    torch.manual_seed(0)
    rnn = torch.nn.GRU(E, H, num_layers=layers, batch_first=True).double()
    with torch.no_grad():                      # biases away from zero, so a swapped one shows
        for p in rnn.parameters():
            p.uniform_(-0.8, 0.8)
    return rnn


def _grads(rnn, run, x, h0):
    """Outputs, final state and the gradients of a loss that reads both, for one way of running."""
    x = x.clone().requires_grad_(True)
    h0 = h0.clone().requires_grad_(True)
    rnn.zero_grad()
    out, h_n = run(x, h0)
    w_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    w_h = torch.linspace(2, -1, h_n.numel(), dtype=out.dtype).view_as(h_n)
    ((out * w_out).sum() + (h_n * w_h).sum()).backward()
    return [out.detach(), h_n.detach(), x.grad, h0.grad] + [p.grad.clone() for p in rnn.parameters()]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("T", [1, 2, 13])
def test_matches_nn_gru_outputs_and_every_gradient(layers, T):
    rnn = _pair(layers)
    x = torch.randn(3, T, 5, dtype=torch.float64)
    h0 = torch.randn(layers, 3, 7, dtype=torch.float64)        # a carried state, not zero
    assert cpugru.applies(rnn, x)
    ours = _grads(rnn, lambda x, h: cpugru.gru_forward(rnn, x, h), x, h0)
    theirs = _grads(rnn, lambda x, h: rnn(x, h), x, h0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    rnn = _pair(1, E=3, H=4)
    args = (torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True),
            torch.randn(2, 4, dtype=torch.float64, requires_grad=True),
            *[p.detach().clone().requires_grad_(True) for p in rnn.parameters()])
    assert torch.autograd.gradcheck(cpugru._GRULayer.apply, args)


def test_state_carried_across_chunks_equals_one_long_sequence():
    rnn = _pair(2)
    x = torch.randn(2, 20, 5, dtype=torch.float64)
    whole, h_whole = cpugru.gru_forward(rnn, x, None)
    first, h = cpugru.gru_forward(rnn, x[:, :8], None)
    second, h = cpugru.gru_forward(rnn, x[:, 8:], h)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_whole, rtol=1e-12, atol=1e-12)


def test_masked_hidden_weights_are_used():
    rnn = _pair(1)
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    mask = (torch.rand_like(rnn.weight_hh_l0) > 0.5).double()
    w = rnn.weight_hh_l0 * mask
    ours, _ = cpugru.gru_forward(rnn, x, None, {"weight_hh_l0": w})
    want, _ = torch.func.functional_call(rnn, {"weight_hh_l0": w}, (x, None))
    torch.testing.assert_close(ours, want, rtol=1e-10, atol=1e-12)


def test_the_model_uses_it_only_for_cpu_gru_training(monkeypatch):
    calls = []
    real = cpugru.gru_forward
    monkeypatch.setattr("charlm.model.gru_forward", lambda *a: calls.append(1) or real(*a))
    x = torch.randint(0, 10, (2, 5))
    for cell, train, grad, used in [("gru", True, True, True), ("gru", False, True, False),
                                    ("gru", True, False, False), ("lstm", True, True, False)]:
        calls.clear()
        model = CharRNN(ModelConfig(cell=cell, vocab_size=10, embedding_size=4, hidden_size=6))
        model.train(train)
        with torch.set_grad_enabled(grad):
            model(x)
        assert bool(calls) == used, (cell, train, grad)
    model = CharRNN(ModelConfig(cell="gru", vocab_size=10, embedding_size=4, hidden_size=6))
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert not calls                                   # bf16 autocast keeps torch's own kernel


def test_training_with_it_equals_training_with_nn_gru(monkeypatch):
    """A few optimizer steps, chunk after chunk with the state carried and detached: the same
    weights either way (float64, so the order of the sums cannot hide a wrong term)."""
    def train(use_ours: bool):
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(cell="gru", vocab_size=12, embedding_size=4, hidden_size=8, layers=2)).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        data = torch.randint(0, 12, (3, 41), generator=torch.Generator().manual_seed(1))
        state = None
        monkeypatch.setattr("charlm.model.cpu_gru_applies", lambda rnn, x: use_ours)
        for i in range(4):
            x, y = data[:, i * 10:(i + 1) * 10], data[:, i * 10 + 1:(i + 1) * 10 + 1]
            logits, state = model(x, state)
            state = tuple(s.detach() for s in state)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 12), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach() for p in model.parameters()]

    for a, b in zip(train(True), train(False)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
