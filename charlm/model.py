"""The language model: Embedding -> nn.RNN | nn.LSTM | nn.GRU -> Linear.

``forward(x, state)`` takes ids (B, T) and the carried state, and returns logits (B, T, V) and the
new state. The state is a tuple of tensors each (layers, B, H): (h,) for RNN/GRU, (h, c) for LSTM,
so callers treat every cell the same way (detach, save, slice by stream).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import ModelConfig

State = tuple[torch.Tensor, ...]


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embedding_size)
        rnn_class = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[c.cell]
        kwargs = {"nonlinearity": "tanh"} if c.cell == "rnn" else {}
        self.rnn = rnn_class(c.embedding_size, c.hidden_size, num_layers=c.layers,
                             dropout=c.dropout if c.layers > 1 else 0.0, batch_first=True, **kwargs)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)
        if c.cell == "lstm":
            self._init_forget_gate_bias(1.0)

    def _init_forget_gate_bias(self, value: float) -> None:
        # PyTorch orders LSTM gates (input, forget, cell, output); a forget bias of 1 keeps memory
        # open at the start of training (Gers et al. 2000; Jozefowicz et al. 2015).
        H = self.config.hidden_size
        with torch.no_grad():
            for name, p in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    p[H:2 * H].fill_(value)
                elif name.startswith("bias_hh"):
                    p[H:2 * H].zero_()

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        c = self.config
        zeros = lambda: torch.zeros(c.layers, batch_size, c.hidden_size, device=device)
        return (zeros(), zeros()) if c.cell == "lstm" else (zeros(),)

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> tuple[torch.Tensor, State]:
        emb = self.drop(self.embed(x))                    # (B, T, E)
        rnn_state = None
        if state is not None:
            rnn_state = state if self.config.cell == "lstm" else state[0]
        out, new_state = self.rnn(emb, rnn_state)          # out (B, T, H)
        logits = self.head(self.drop(out))                 # (B, T, V)
        if not isinstance(new_state, tuple):
            new_state = (new_state,)
        return logits, new_state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    """Cut the graph at the chunk border: the values carry on, the gradient stops here."""
    return tuple(s.detach() for s in state)
