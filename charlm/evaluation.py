"""Stateful evaluation: the loss of a model over a whole token sequence, in nats per token.

The ids are split into S contiguous streams evaluated side by side in chunks, carrying the hidden
state; each stream first reads a lead-in of the text before its piece, unscored, so every token is
predicted from a long history, as if one stream had read the whole text. Training's validation and
`charlm evaluate` use this same function, so their figures agree; during training only a fixed,
evenly spread sample of a large split is scored (TrainConfig.eval_tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CorpusError
from .events import ProgressCallback
from .limits import steps_per_call
from .model import Model, detach_state
from .records import reset_mask

IGNORE = -100


@dataclass
class EvalResult:
    nats: float        # total over all predicted tokens
    tokens: int        # scored tokens (all but the first, or the sample's)
    chars: float       # original characters those tokens cover

    @property
    def loss(self) -> float:
        """Mean nats per token (NaN when nothing was scored: never a fake perfect 0)."""
        return self.nats / self.tokens if self.tokens > 0 else math.nan

    @property
    def finite(self) -> bool:
        """Whether the figures mean anything: tokens were scored and the loss did not overflow."""
        return self.tokens > 0 and self.chars > 0 and math.isfinite(self.nats)

    @property
    def bits_per_char(self) -> float:
        return self.nats / self.chars / math.log(2) if self.chars > 0 else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def as_dict(self) -> dict:
        return {"loss": self.loss, "bits_per_char": self.bits_per_char, "perplexity": self.perplexity,
                "tokens": self.tokens, "chars": self.chars}


@torch.inference_mode()
def evaluate_ids(model: Model, ids: np.ndarray, chars: int, device: torch.device,
                 streams: int = 64, chunk: int = 256, context: int = 128,
                 max_tokens: Optional[int] = None, separator: Optional[int] = None,
                 progress: Optional[ProgressCallback] = None) -> EvalResult:
    """Loss over ids (N,), whose text had ``chars`` original characters.

    The N - 1 targets are cut into ``streams`` contiguous pieces run side by side (a wide batch
    keeps the CPU's matrix units busy). Each piece but the first starts reading ``context`` tokens
    early and does not score them, so every target is predicted from at least ``context`` tokens
    of history, or from all of it: the figure agrees with one stream reading the whole text to
    about 1e-4 nats on tiny shakespeare, where 64 zero-state starts biased it upwards by 4e-3
    (tests/test_evaluation.py checks both ways). ``max_tokens`` scores only that many targets, in
    ``streams`` evenly spread pieces: the same pieces every time, so estimates compare.
    ``separator`` (--records): the state is zeroed before each separator is read, as in training.
    ``progress(done, total)`` is called after each chunk (a display's hook; the core draws nothing).
    """
    n = len(ids)
    if n < 2:  # nothing to predict: a loss of 0 here would read as a perfect model
        raise CorpusError(f"the text to evaluate has {n} token{'s' if n != 1 else ''}: at least two are "
                          f"needed (the first is only read, the rest are predicted)")
    was_training = model.training
    model.eval()
    # Target t (1 <= t < n) is ids[t] predicted from ids[:t]. Stream s scores targets
    # first[s] + 1 .. last[s] and reads its inputs from begin[s]; a short text gets fewer streams.
    targets = n - 1
    if max_tokens is None or max_tokens >= targets:
        streams = max(1, min(streams, targets // 64))
        length = math.ceil(targets / streams)
        first = np.arange(streams) * length                      # (S,) contiguous pieces
    else:
        streams = max(1, min(streams, max_tokens // 64))
        length = max(1, max_tokens // streams)
        first = np.arange(streams) * targets // streams          # (S,) evenly spread pieces
    last = np.minimum(first + length, targets)                   # (S,) the stream's last target
    # A transformer sees at most its window + memory: a lead-in that long fills its memory first.
    context = max(context, model.reach or 0)
    begin = np.maximum(first - context, 0)                       # (S,) where its inputs start
    steps = int((last - begin).max())
    scored = int(np.clip(last - first, 0, None).sum())
    chunk = steps_per_call(streams, model.config.vocab_size, model.chunk_length(chunk))   # (S, T, V) bounded
    state = model.init_state(streams, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, steps, chunk):
        width = min(chunk, steps - start)
        # Chunks are gathered straight from ids (a memmap for a corpus split): memory stays flat.
        pos = begin[:, None] + start + np.arange(width + 1)                  # (S, T+1) positions
        window = np.asarray(ids[np.minimum(pos, n - 1)], dtype=np.int64)    # (S, T+1)
        target = pos[:, 1:]                                                  # (S, T)
        keep = (target > first[:, None]) & (target <= last[:, None])         # lead-in and padding out
        y = np.where(keep, window[:, 1:], IGNORE)
        x = torch.from_numpy(window[:, :-1]).to(device)                       # (S, T)
        logits, state = model(x, state, reset_mask(x, separator))            # (S, T, V)
        total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                 torch.from_numpy(y).to(device).reshape(-1),
                                 ignore_index=IGNORE, reduction="sum").double()
        state = detach_state(state)
        if progress is not None:
            progress(start + width, steps)
    model.train(was_training)
    return EvalResult(nats=float(total), tokens=scored, chars=chars * scored / n)
