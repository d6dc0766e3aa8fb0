"""The language model: Embedding -> nn.RNN | nn.LSTM | nn.GRU | minGRU | minLSTM -> Linear, and
``build_model``, which makes it or the Transformer (charlm/transformer.py) from a config.

``forward(x, state)`` takes ids (B, T) and the carried state, and returns logits (B, T, V) and the
new state. The state is a tuple of tensors each (layers, B, H): (h,) for RNN/GRU, (h, c) for LSTM,
so callers treat every cell the same way (detach, save, slice by stream). minGRU and minLSTM
(charlm/mincells.py) have only h, so their state is (h,) too.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from .config import ModelConfig
from .cpugru import applies as cpu_gru_applies, gru_forward
from .mincells import MODES as MIN_CELLS, MinRNN
from .transformer import CharTransformer

State = tuple[torch.Tensor, ...]


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embedding_size)
        dropout = c.dropout if c.layers > 1 else 0.0
        if c.cell in MIN_CELLS:
            self.rnn = MinRNN(c.cell, c.embedding_size, c.hidden_size, c.layers, dropout)
        else:
            rnn_class = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[c.cell]
            kwargs = {"nonlinearity": "tanh"} if c.cell == "rnn" else {}
            self.rnn = rnn_class(c.embedding_size, c.hidden_size, num_layers=c.layers,
                                 dropout=dropout, batch_first=True, **kwargs)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)
        if c.tie_weights:   # one (V, H) matrix reads tokens in and scores them out; E == H
            self.head.weight = self.embed.weight
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

    def forward(self, x: torch.Tensor, state: Optional[State] = None,
                reset: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, V) and the new state for ids x (B, T), from ``state`` (zero when None).

        ``reset`` (B, T) bool, for --records: where reset[b, t], stream b's state is zeroed just
        before it reads x[b, t] (a record start), so nothing before it leaks into what follows.
        """
        emb = self.drop(self.embed(x))                    # (B, T, E)
        if reset is None:
            return self._recur(emb, state)
        # The fused kernels cannot zero a state mid-sequence, so the chunk runs in segments cut
        # at the positions where any stream resets: one fused call when none does, and at each
        # cut only the rows of the streams that reset there are zeroed (exact for every cell).
        cuts = torch.nonzero(reset.any(dim=0)).flatten().tolist()    # one host sync per chunk
        if not cuts:
            return self._recur(emb, state)
        if state is None:
            state = self.init_state(x.size(0), x.device)
        bounds = sorted(set([0] + cuts + [x.size(1)]))
        outs = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            zero = reset[:, s].view(1, -1, 1)                            # (1, B, 1)
            state = tuple(torch.where(zero, torch.zeros((), dtype=h.dtype, device=h.device), h)
                          for h in state)
            out, state = self._recur(emb[:, s:e], state)                  # (B, e - s, V)
            outs.append(out)
        return torch.cat(outs, dim=1), state

    def _recur(self, emb: torch.Tensor, state: Optional[State]) -> tuple[torch.Tensor, State]:
        """The recurrence and the head on embedded input (B, T, E): logits (B, T, V), new state."""
        rnn_state = None
        if state is not None:
            rnn_state = state if self.config.cell == "lstm" else state[0]
        dropped = None
        if self.training and self.config.weight_drop > 0:
            # DropConnect: fresh masks on the hidden-to-hidden matrices for this chunk, the same at
            # every step of it (a per-step mask would break the fused kernels and the recurrence's
            # consistency); F.dropout rescales the kept weights by 1 / (1 - p).
            dropped = {name: F.dropout(w, self.config.weight_drop)
                       for name, w in self.rnn.named_parameters() if name.startswith("weight_hh")}
        if cpu_gru_applies(self.rnn, emb):
            # Training a GRU on a CPU: the same weights and equations with a cheaper backward
            # (charlm/cpugru.py), faster than torch's own loop, most for two layers and older
            # CPUs (benchmarks/gru_speed.py; the figures are in benchmarks/HISTORY.md).
            out, new_state = gru_forward(self.rnn, emb, rnn_state, dropped)
        elif dropped:
            out, new_state = torch.func.functional_call(self.rnn, dropped, (emb, rnn_state))
        else:
            out, new_state = self.rnn(emb, rnn_state)      # out (B, T, H)
        logits = self.head(self.drop(out))                 # (B, T, V)
        if not isinstance(new_state, tuple):
            new_state = (new_state,)
        return logits, new_state

    def stepper(self, column_major: bool = False) -> Callable[[torch.Tensor, list[State]], tuple[torch.Tensor, list[State]]]:
        """A function for generation that runs one token per sequence: (ids (B,), state) -> (logits (B, V), state).

        The same weights and equations as ``forward`` in eval mode, layer by layer through torch's
        own cell functions, because on CPU a length-1 nn.LSTM call costs several times its
        arithmetic (oneDNN sets up a whole sequence kernel per call). The weights are gathered once
        and detached, so a step builds no graph and pays no module lookups. ``state`` holds one
        tuple per layer ((h, c) or (h,), each (B, H)): see ``split_state``. Keep this in step with
        forward; tests/test_sampling_fastpath.py checks that the two agree for every cell.

        ``column_major`` keeps a column-major copy of each hidden-to-hidden matrix (same values):
        for a batch of one or two on CPU, MKL's product with that layout took 20-30% less time
        than with the row-major one on the machines measured (benchmarks/sampling_speed.py), and
        more time for larger batches.
        """
        if self.config.cell in MIN_CELLS:
            return self._min_stepper()
        cell = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn": torch.rnn_tanh_cell}[self.config.cell]
        lstm = self.config.cell == "lstm"
        r = self.rnn
        layers = [[getattr(r, f"{w}_l{i}").detach() for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                  for i in range(r.num_layers)]
        if column_major:
            for weights in layers:
                weights[1] = weights[1].t().contiguous().t()
        embedding, head_w, head_b = self.embed.weight.detach(), self.head.weight.detach(), self.head.bias.detach()

        def step(ids: torch.Tensor, state: list[State]) -> tuple[torch.Tensor, list[State]]:
            x = F.embedding(ids, embedding)                  # (B, E)
            new_state = []
            for weights, s in zip(layers, state):
                s = cell(x, s, *weights) if lstm else (cell(x, s[0], *weights),)
                new_state.append(s)
                x = s[0]                                     # h feeds the next layer
            return F.linear(x, head_w, head_b), new_state    # (B, V)

        return step

    def _min_stepper(self) -> Callable[[torch.Tensor, list[State]], tuple[torch.Tensor, list[State]]]:
        """``stepper`` for minGRU/minLSTM: the stack's own one-step form, without a graph.

        No column-major trick: these cells have no hidden-to-hidden matrix.
        """
        rnn = self.rnn

        def step(ids: torch.Tensor, state: list[State]) -> tuple[torch.Tensor, list[State]]:
            with torch.no_grad():
                y, h = rnn.step(self.embed(ids), [s[0] for s in state])   # (B, H), one (B, H) per layer
                return self.head(y), [(h_l,) for h_l in h]                  # (B, V)

        return step

    @staticmethod
    def split_state(state: State) -> list[State]:
        """(h, c) each (layers, B, H) -> one (h, c) per layer, the form a ``stepper`` takes."""
        return [tuple(s[i] for s in state) for i in range(state[0].size(0))]

    @staticmethod
    def join_state(state: list[State]) -> State:
        """The inverse of ``split_state``."""
        return tuple(torch.stack([layer[j] for layer in state]) for j in range(len(state[0])))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # What reading a text by ``forward`` may assume: any chunk length works, and the state reaches
    # back without bound (the transformer's answers differ).
    reach: Optional[int] = None

    def chunk_length(self, most: int) -> int:
        """Tokens per ``forward`` call when reading a text: any length does, so ``most``."""
        return most

    def flatten_parameters(self) -> None:
        """cuDNN wants the recurrent weights in one contiguous buffer (min cells have none)."""
        if hasattr(self.rnn, "flatten_parameters"):
            self.rnn.flatten_parameters()

    def step_state(self, batch_size: int, device: torch.device | str = "cpu") -> list[State]:
        """A zero state in the stepper's form (one tuple per layer): where generation starts."""
        return self.split_state(self.init_state(batch_size, device))

    def read(self, x: torch.Tensor, state: list[State]) -> tuple[torch.Tensor, list[State]]:
        """``forward`` on ids x (B, T) with the state in the stepper's form: how generation reads a
        prime (the transformer's counterpart reads with its own generation cache)."""
        logits, new = self(x, self.join_state(state))
        return logits, self.split_state(new)


# Either kind of model: the same forward/init_state/step_state/read/stepper interface.
Model = Union[CharRNN, CharTransformer]


def build_model(config: ModelConfig) -> Model:
    """The model a config describes: a recurrent net, or a transformer for --model transformer."""
    if config.cell == "transformer":
        return CharTransformer(config)
    return CharRNN(config)


def detach_state(state: State) -> State:
    """Cut the graph at the chunk border: the values carry on, the gradient stops here."""
    return tuple(s.detach() for s in state)
