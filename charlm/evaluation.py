"""Stateful evaluation: the loss of a model over a whole token sequence, in nats per token.

The ids are split into S contiguous streams evaluated side by side in chunks, carrying the hidden
state, so every token is predicted from its full history within its stream. Training's validation
and `charlm evaluate` use this same function, so their figures agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import CharRNN, detach_state

IGNORE = -100


@dataclass
class EvalResult:
    nats: float        # total over all predicted tokens
    tokens: int        # predicted tokens (all but the first)
    chars: float       # original characters those tokens cover

    @property
    def loss(self) -> float:
        """Mean nats per token."""
        return self.nats / max(1, self.tokens)

    @property
    def bits_per_char(self) -> float:
        return self.nats / max(self.chars, 1e-9) / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def as_dict(self) -> dict:
        return {"loss": self.loss, "bits_per_char": self.bits_per_char, "perplexity": self.perplexity,
                "tokens": self.tokens, "chars": self.chars}


@torch.inference_mode()
def evaluate_ids(model: CharRNN, ids: np.ndarray, chars: int, device: torch.device,
                 streams: int = 16, chunk: int = 256) -> EvalResult:
    """Loss over ids (N,), whose text had ``chars`` original characters."""
    n = len(ids)
    if n < 2:
        return EvalResult(nats=0.0, tokens=0, chars=0.0)
    was_training = model.training
    model.eval()
    # Stream s predicts targets s*L+1 .. s*L+L from inputs one position earlier. Chunks are read
    # straight from ids (a memmap for a corpus split), so memory stays flat for any length.
    streams = max(1, min(streams, (n - 1) // 64 or 1))
    length = math.ceil((n - 1) / streams)
    state = model.init_state(streams, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, length, chunk):
        width = min(chunk, length - start)
        window = np.zeros((streams, width + 1), dtype=np.int64)      # (S, T+1), zero past the end
        lengths = []
        for s in range(streams):
            lo = s * length + start
            piece = np.asarray(ids[lo: min(lo + width + 1, n)], dtype=np.int64)
            window[s, :len(piece)] = piece
            lengths.append(max(0, len(piece) - 1))                    # targets this stream has here
        x = torch.from_numpy(window[:, :-1]).to(device)                  # (S, T)
        y = torch.from_numpy(window[:, 1:]).clone()
        for s, k in enumerate(lengths):
            y[s, k:] = IGNORE                                          # padding past the text's end
        logits, state = model(x, state)                                  # (S, T, V)
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(device).reshape(-1),
                                 ignore_index=IGNORE, reduction="sum").double()
        state = detach_state(state)
    model.train(was_training)
    predicted = n - 1
    return EvalResult(nats=float(total), tokens=predicted, chars=chars * predicted / n)
