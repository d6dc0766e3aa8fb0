"""minGRU and minLSTM: recurrent cells whose gates read only the input, so they train in parallel.

Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs All We Needed?" (2024). With z_t and the
candidate h~_t computed from x_t alone, a chunk is the linear recurrence

    h_t = a_t * h_(t-1) + b_t        (elementwise; a_t, b_t in (0, 1) and (0, inf))

    minGRU:  a_t = 1 - z_t,  b_t = z_t * h~_t,   z_t = sigmoid(W_z x_t + b_z)
    minLSTM: a_t = f'_t,     b_t = i'_t * h~_t,  f' = f / (f + i), i' = i / (f + i),
             f_t = sigmoid(W_f x_t + b_f), i_t = sigmoid(W_i x_t + b_i)

with h~_t = g(W_h x_t + b_h) and g(x) = x + 0.5 for x >= 0 else sigmoid(x) (the paper's log-space
version: g keeps h~ positive so its logarithm exists, and grows linearly like the identity).

Unrolled, h_t = A_t h_0 + sum_{s<=t} (A_t / A_s) b_s with A_t = a_1 ... a_t. ``scan`` computes
this for every t at once, in log space (the paper's form): with a*_t = cumsum(log a)_t,

    h_t = exp(a*_t) * h_0 + exp(a*_t + logcumsumexp(log b - a*)_t)

logcumsumexp is a parallel prefix operation (O(log T) depth), and working with logarithms keeps the
running product A_t (which underflows after a few hundred steps) out of the arithmetic. The carried
state h_0 enters as its own linear term rather than as log h_0 inside the logcumsumexp: a fresh
state is exactly zero (log 0 = -inf, whose gradient is not finite), and the term is linear in h_0
anyway. So a chunk carries its state to the next exactly as the step-by-step recurrence does.

``MinRNN`` stacks layers (the block structure):

    y = h^0 = cell_0(x)                                    layer 0: input width E -> H
    y = y + h^l,  h^l = cell_l(dropout(LayerNorm(y)))      layers l >= 1: pre-norm residual

The state of layer l is its own h^l (B, H), so the carried state is a tensor (layers, B, H) like
nn.GRU's h_n; the output (B, T, H) is the residual stream y, which the language model's head reads.
A single layer is exactly the paper's cell, and its state Jacobian dh_T/dh_t is the diagonal
product of a_s = (1 - z_s) for s = t+1..T (docs/gradients.md).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

MODES = {"mingru": "MINGRU", "minlstm": "MINLSTM"}


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation: x + 0.5 for x >= 0, sigmoid(x) below (continuous at 0)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), stable for large |x|. relu() keeps the unused branch's log finite (no NaN grad)."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), F.logsigmoid(x))


def scan(log_a: torch.Tensor, log_b: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """All h_t of h_t = a_t * h_(t-1) + b_t at once. log_a, log_b (B, T, H); h0 (B, H) or None (zero).

    Returns h (B, T, H). See the module docstring for the formula.
    """
    a_star = log_a.cumsum(dim=1)                                          # (B, T, H): log A_t
    h = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=1))     # (B, T, H)
    if h0 is not None:
        h = h + torch.exp(a_star) * h0.unsqueeze(1)                       # A_t * h_0
    return h


class MinCell(nn.Module):
    """One minGRU or minLSTM layer: a single Linear from the input to every gate and the candidate.

    ``coefficients`` gives log a_t and log b_t for the scan; ``step`` is the same recurrence one
    time step at a time, written with the plain (not log) quantities, as generation runs it.
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int):
        super().__init__()
        if mode not in MODES.values():
            raise ValueError(f"unknown min cell mode {mode!r}")
        self.mode = mode
        # minGRU: [z, h~]; minLSTM: [f, i, h~]. Gate order is fixed: checkpoints depend on it.
        n = 2 if mode == "MINGRU" else 3
        self.linear = nn.Linear(input_size, n * hidden_size)

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pre = self.linear(x)
        # Under bf16/fp16 autocast the scan must still run in fp32 at least: a cumulative sum of
        # hundreds of log-gates loses every digit in bf16.
        if pre.dtype in (torch.float16, torch.bfloat16):
            pre = pre.float()
        return pre.chunk(2 if self.mode == "MINGRU" else 3, dim=-1)

    def _log_mix(self, gates: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """log of the (keep, write) weights: (log(1 - z), log z) or (log f', log i')."""
        if self.mode == "MINGRU":
            k = gates[0]
            return F.logsigmoid(-k), F.logsigmoid(k)
        # d = log(i / f) = log sigmoid(i_pre) - log sigmoid(f_pre); f' = 1 / (1 + i/f) = sigmoid(-d).
        d = F.logsigmoid(gates[1]) - F.logsigmoid(gates[0])
        return F.logsigmoid(-d), F.logsigmoid(d)

    def coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, I) -> log a, log b each (B, T, H) of h_t = a_t h_(t-1) + b_t."""
        gates = self._gates(x)
        log_keep, log_write = self._log_mix(gates)
        return log_keep, log_write + log_g(gates[-1])

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The parallel form: x (B, T, I), h0 (B, H) or None -> h (B, T, H)."""
        log_a, log_b = self.coefficients(x)
        return scan(log_a, log_b, None if h0 is None else h0.to(log_a.dtype))

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The sequential form: x (B, I), h (B, H) -> the next h (B, H)."""
        gates = self._gates(x)
        log_keep, log_write = self._log_mix(gates)
        return torch.exp(log_keep) * h.to(log_keep.dtype) + torch.exp(log_write) * g(gates[-1])


class MinRNN(nn.Module):
    """A stack of min cells with nn.GRU's interface: forward(x (B, T, I), h (layers, B, H) or None)
    -> (out (B, T, H), h_n (layers, B, H)). Always batch first.

    T > 1 runs the parallel scan; T = 1 (generation) runs the one-step form. Both give the same
    numbers up to rounding (tests/test_mincells.py).
    """

    batch_first = True
    bidirectional = False
    proj_size = 0

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.mode = MODES[cell]
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.cells = nn.ModuleList(MinCell(self.mode, input_size if l == 0 else hidden_size, hidden_size)
                                   for l in range(num_layers))
        # Layer 0 has no residual (its input is narrower), so no norm either: norms[l - 1] is layer l's.
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_layers - 1))
        self.drop = nn.Dropout(dropout)

    def flatten_parameters(self) -> None:
        """Nothing to flatten (there is no cuDNN kernel); here because callers treat every cell alike."""

    def _layer_input(self, l: int, y: torch.Tensor) -> torch.Tensor:
        return y if l == 0 else self.drop(self.norms[l - 1](y))

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.size(1) == 1:
            out, h_n = self.step(x[:, 0], None if h0 is None else list(h0))
            return out.unsqueeze(1), torch.stack(h_n)
        y, last = x, []
        for l, cell in enumerate(self.cells):
            h = cell(self._layer_input(l, y), None if h0 is None else h0[l])    # (B, T, H)
            y = h if l == 0 else y + h
            last.append(h[:, -1])
        return y, torch.stack(last)                                       # (B, T, H), (layers, B, H)

    def step(self, x: torch.Tensor, h: Optional[list[torch.Tensor]] = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One time step through every layer: x (B, I), h one (B, H) per layer (None: zeros).

        Returns the output (B, H) and the new h of each layer.
        """
        if h is None:
            h = [x.new_zeros(x.size(0), self.hidden_size) for _ in self.cells]
        y, new = x, []
        for l, cell in enumerate(self.cells):
            h_l = cell.step(self._layer_input(l, y), h[l])
            y = h_l if l == 0 else y + h_l
            new.append(h_l)
        return y, new
