"""GRU layers for training on a CPU: nn.GRU's own weights and equations, with a hand-written backward.

Why: with autograd on, torch runs nn.GRU on a CPU as a Python-free but op-by-op loop, and its
backward does three small matrix products per time step (the hidden state's gradient and the
hidden-to-hidden weight gradient, h^T dgates, whose inner size is only the batch) plus about twenty
small elementwise ops. On the 2-core machines charlm is benchmarked on, those per-step costs, not
the arithmetic, set the training speed (benchmarks/gru_speed.py).

Here each time step of the backward does one matrix product (dgates @ W_hh) and a handful of
elementwise ops: every factor that does not depend on the incoming gradient (the gate
derivatives) is computed for the whole chunk at once before the loop, and the weight gradients are
two large products over all T * B rows after it. The forward stores what the backward needs.

The equations are nn.GRU's (PyTorch's gate order r, z, n; b_hn inside the reset product):

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h  =  n + z * (h - n)

so a model trained here is an ordinary nn.GRU model: checkpoints, sampling, evaluation, export and
inspect-gradients never know. tests/test_cpugru.py checks outputs and every gradient against
nn.GRU in float64, with a carried state and across layers.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class _GRULayer(torch.autograd.Function):
    """One layer over a whole chunk, time-major: x (T, B, E), h0 (B, H) -> out (T, B, H)."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh):
        T, B, _ = x.shape
        H = h0.size(1)
        # The input's share of every gate, for all T at once: one large product.
        gi = torch.addmm(b_ih, x.reshape(T * B, -1), w_ih.t()).view(T, B, 3 * H)
        gh = x.new_empty(T, B, 3 * H)      # W_h* h + b_h*, kept: the backward needs W_hn h + b_hn
        rz = x.new_empty(T, B, 2 * H)      # the gates r | z
        n = x.new_empty(T, B, H)           # the candidate
        out = x.new_empty(T, B, H)         # h_1 .. h_T
        w_hh_t = w_hh.t()
        h = h0
        for t in range(T):
            torch.addmm(b_hh, h, w_hh_t, out=gh[t])                               # (B, 3H)
            torch.add(gi[t, :, :2 * H], gh[t, :, :2 * H], out=rz[t]).sigmoid_()    # (B, 2H)
            torch.addcmul(gi[t, :, 2 * H:], rz[t, :, :H], gh[t, :, 2 * H:], out=n[t]).tanh_()
            torch.addcmul(n[t], rz[t, :, H:], h - n[t], out=out[t])               # n + z (h - n)
            h = out[t]
        ctx.save_for_backward(x, h0, w_ih, w_hh, gh, rz, n, out)
        return out

    @staticmethod
    def backward(ctx, d_out):
        x, h0, w_ih, w_hh, gh, rz, n, out = ctx.saved_tensors
        T, B, H = out.shape
        d_out = d_out.contiguous()
        h_prev = torch.cat([h0.unsqueeze(0), out[:-1]])                           # (T, B, H)
        r, z = rz[..., :H], rz[..., H:]
        # Everything that does not depend on the incoming gradient, for the whole chunk at once:
        #   d pre_n = dh * (1 - z) * (1 - n^2)
        #   d pre_z = dh * (h_prev - n) * z (1 - z)
        #   d pre_r = d pre_n * (W_hn h + b_hn) * r (1 - r)
        to_pre_n = (1 - z) * (1 - n * n)                                          # (T, B, H)
        to_pre_z = (h_prev - n) * z * (1 - z)
        to_pre_r = gh[..., 2 * H:] * r * (1 - r)
        d_gh = out.new_empty(T, B, 3 * H)   # gradient at W_h* h + b_h* (pre_r | pre_z | r * d pre_n)
        d_pre_n = out.new_empty(T, B, H)    # gradient at the candidate's pre-activation
        d_h = torch.zeros_like(h0)          # from the steps after t, through h_t
        for t in range(T - 1, -1, -1):
            dh = d_out[t] + d_h                                                   # (B, H)
            torch.mul(dh, to_pre_n[t], out=d_pre_n[t])
            torch.mul(dh, to_pre_z[t], out=d_gh[t, :, H:2 * H])
            torch.mul(d_pre_n[t], to_pre_r[t], out=d_gh[t, :, :H])
            torch.mul(d_pre_n[t], r[t], out=d_gh[t, :, 2 * H:])
            d_h = torch.addmm(dh * z[t], d_gh[t], w_hh)                           # (B, H)
        # The input gates' gradient equals the hidden one for r and z; for n it is d pre_n itself.
        d_gi = torch.cat([d_gh[..., :2 * H], d_pre_n], dim=-1).view(T * B, 3 * H)
        d_gh_rows = d_gh.view(T * B, 3 * H)
        d_w_hh = d_gh_rows.t() @ h_prev.reshape(T * B, H)                         # (3H, H)
        d_w_ih = d_gi.t() @ x.reshape(T * B, -1)                                  # (3H, E)
        d_x = (d_gi @ w_ih).view_as(x) if ctx.needs_input_grad[0] else None
        return d_x, d_h, d_w_ih, d_w_hh, d_gi.sum(0), d_gh_rows.sum(0)


def applies(rnn: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``gru_forward`` should run instead of the module: an nn.GRU training on a CPU in
    float32/float64 with autograd on, outside autocast (bf16 autocast keeps torch's own kernel)."""
    return (isinstance(rnn, nn.GRU) and rnn.training and torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and not rnn.bidirectional
            and rnn.bias and rnn.batch_first)


def gru_forward(rnn: nn.GRU, x: torch.Tensor, h0: Optional[torch.Tensor],
                weights: Optional[dict[str, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``rnn(x, h0)`` returns, for a batch-first nn.GRU: out (B, T, H), h_n (layers, B, H).

    ``weights`` replaces some of the module's parameters by name (weight drop passes its masked
    hidden-to-hidden matrices). Dropout between layers is nn.GRU's: on every layer's output but
    the last's, in training.
    """
    weights = weights or {}
    p = lambda name: weights.get(name, getattr(rnn, name))
    B = x.size(0)
    if h0 is None:
        h0 = x.new_zeros(rnn.num_layers, B, rnn.hidden_size)
    y = x.transpose(0, 1).contiguous()                                            # (T, B, E)
    last = []
    for layer in range(rnn.num_layers):
        if layer > 0 and rnn.dropout > 0:
            y = F.dropout(y, rnn.dropout, training=True)
        y = _GRULayer.apply(y, h0[layer], p(f"weight_ih_l{layer}"), p(f"weight_hh_l{layer}"),
                            p(f"bias_ih_l{layer}"), p(f"bias_hh_l{layer}"))           # (T, B, H)
        last.append(y[-1])
    return y.transpose(0, 1), torch.stack(last)
