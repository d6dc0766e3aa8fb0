"""Scoring text: how surprised the model is by each character, and what it expected instead.

The model reads the text as one stream, in chunks with the hidden state carried (memory stays flat
whatever the length). Token t (t >= 1) costs -log2 p(ids[t] | ids[:t]) bits; the first token has
no prediction, exactly as in `evaluate`. These are the same figures `evaluate` sums: on a text
short enough for its lead-in to reach back to the start they agree to float precision, and on a
long one to about 1e-4 nats (its streams each start from a bounded lead-in; see evaluation.py).

Tokens and characters. The figures are reported per character of the text as given:
- a character tokenizer without normalisation: one token per character, nothing to attribute;
- NFD (Korean): a syllable is several jamo tokens; the syllable's surprisal is the sum of its jamo's
  bits, which is exactly -log2 p(syllable | past) by the chain rule;
- a token that covers several characters (a sentencepiece piece such as " the") has its bits split
  evenly over them; a byte-fallback piece belongs to the character its bytes encode;
- NFC composing several characters into one token splits that token's bits evenly over them too.
So the per-character bits always add up to the total; a character partly covered by the text's
first token (the first syllable, under NFD) carries only the bits of its other tokens. The mean, ``bits_per_char``, is the total
over the characters the predicted tokens cover counted the way `evaluate` counts them (the text's
length times the fraction of its tokens that were predicted), so the two figures agree; for a
character tokenizer that count is simply every character but the first.

At each character the result also holds the model's ``top`` most likely tokens at the position
where that character's first token was predicted (None for characters of the first token), and
``next``, its top guesses for what follows the text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .config import MAX_SCORE_CHARS
from .corpus.tokenizers import CharTokenizer, Tokenizer, _is_starter, normalize_text
from .errors import ConfigError
from .events import ProgressCallback
from .limits import steps_per_call
from .model import Model
from .threads import torch_threads

SCHEMA = "charlm.score/1"
CHUNK = 256  # tokens per forward call: activations stay (1, CHUNK, V) whatever the text's length

Guess = tuple[str, float]  # (token as text, probability)


@dataclass
class ScoreResult:
    text: str
    bits: list[Optional[float]]                 # per character of text; None: nothing predicted there
    top: list[Optional[list[Guess]]]            # per character: what the model expected at its first token
    next: list[Guess]                           # what the model expects after the text
    nats: float                                 # total over the predicted tokens
    tokens: int                                 # tokens of the text
    tokenizer: str = "char"
    normalize: str = "none"
    unknown_chars: list[str] = field(default_factory=list)

    @property
    def total_bits(self) -> float:
        return self.nats / math.log(2)

    @property
    def scored_chars(self) -> float:
        """The characters the predicted tokens cover, counted as `evaluate` counts them."""
        return len(self.text) * (self.tokens - 1) / max(self.tokens, 1)

    @property
    def bits_per_char(self) -> float:
        return self.total_bits / max(self.scored_chars, 1e-9)

    def to_json(self) -> dict:
        """The charlm.score/1 document (every figure; ``positions`` runs over the text's characters)."""
        guesses = lambda g: None if g is None else [{"text": s, "p": p} for s, p in g]
        return {
            "schema": SCHEMA,
            "tokenizer": self.tokenizer, "normalize": self.normalize,
            "characters": len(self.text), "tokens": self.tokens, "scored_tokens": self.tokens - 1,
            "scored_chars": self.scored_chars, "total_bits": self.total_bits,
            "bits_per_char": self.bits_per_char,
            "unknown_chars": self.unknown_chars,
            "positions": [{"char": c, "bits": b, "top": guesses(t)}
                          for c, b, t in zip(self.text, self.bits, self.top)],
            "next": guesses(self.next),
        }


@torch.inference_mode()
def token_predictions(model: Model, ids: np.ndarray, device: torch.device | str,
                      top: int, chunk: int = CHUNK, progress: Optional[ProgressCallback] = None,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bits of each predicted token, and the model's top guesses at every position.

    Returns bits (N-1,) for tokens 1..N-1, and top ids / probabilities (N, k): row j is the
    prediction made after reading ids[:j+1], so row N-1 is what follows the text.
    """
    was_training = model.training
    model.eval()
    n, k = len(ids), min(top, model.config.vocab_size)
    x_all = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    bits = np.empty(n - 1, dtype=np.float64)
    top_ids = np.empty((n, k), dtype=np.int64)
    top_p = np.empty((n, k), dtype=np.float64)
    state = None
    # One stream is a chain of batch-1 steps: on CPU a second thread only waits on the first, and
    # on a busy machine makes scoring several times slower.
    chunk = steps_per_call(1, model.config.vocab_size, model.chunk_length(chunk))   # (1, T, V) bounded
    with torch_threads(1 if torch.device(device).type == "cpu" else None):
        for start in range(0, n, chunk):
            x = x_all[start:start + chunk]                               # (T,)
            logits, state = model(x[None].to(device), state)             # (1, T, V), state carried
            logp = torch.log_softmax(logits[0].cpu().double(), dim=-1)   # (T, V); MPS has no float64
            target = x_all[start + 1:start + 1 + len(x)]                 # (T,) or (T-1,) at the end
            bits[start:start + len(target)] = (-logp[torch.arange(len(target)), target] / math.log(2)).numpy()
            if k:
                p, i = logp.topk(k, dim=-1)                              # (T, k)
                top_ids[start:start + len(x)], top_p[start:start + len(x)] = i.numpy(), p.exp().numpy()
            if progress is not None:
                progress(start + len(x), n)
    model.train(was_training)
    return bits, top_ids, top_p


def score_text(model: Model, tokenizer: Tokenizer, text: str, device: torch.device | str = "cpu",
               top: int = 3, progress: Optional[ProgressCallback] = None) -> ScoreResult:
    """Score text (see the module docstring for how tokens map to characters); ``progress(done,
    total)`` hears of each chunk of tokens scored."""
    if top < 0:
        raise ConfigError(f"--top must be 0 or more, got {top}")
    if len(text) > MAX_SCORE_CHARS:   # per-character detail: memory grows with the text
        raise ConfigError(f"the text has {len(text):,} characters, more than the {MAX_SCORE_CHARS:,} "
                          f"score shows one by one; `charlm evaluate` gives the figures of any length")
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if len(ids) < 2:
        raise ConfigError("nothing to score: the text needs at least two tokens (two characters for a "
                          "character model), as the first one has no prediction")
    bits, top_ids, top_p = token_predictions(model, ids, device, top, progress=progress)
    spans = token_spans(tokenizer, text, len(ids))                      # (N, 2) over text's characters
    names = token_names(tokenizer)
    guesses = [[(names[i], float(p)) for i, p in zip(row_i, row_p)] for row_i, row_p in zip(top_ids, top_p)]
    per_char: list[Optional[float]] = [None] * len(text)
    char_top: list[Optional[list[Guess]]] = [None] * len(text)
    for t in range(1, len(ids)):
        a, e = int(spans[t, 0]), int(spans[t, 1])
        share = float(bits[t - 1]) / (e - a)
        for c in range(a, e):
            per_char[c] = share + (per_char[c] or 0.0)
        if char_top[a] is None and spans[t - 1, 0] != a:                # the character's first token
            char_top[a] = guesses[t - 1]
    return ScoreResult(text=text, bits=per_char, top=char_top, next=guesses[-1],
                       nats=float(bits.sum()) * math.log(2), tokens=len(ids),
                       tokenizer=tokenizer.kind, normalize=tokenizer.normalize,
                       unknown_chars=tokenizer.unknown_chars(text))


def token_names(tokenizer: Tokenizer) -> list[str]:
    """Each id as text a person can read: a character (NFD jamo as they are), "<unk>", a piece."""
    if isinstance(tokenizer, CharTokenizer):
        return list(tokenizer.itos)
    names = []
    for i in range(tokenizer.vocab_size):
        s = tokenizer.decode([i])
        names.append(s if s and "\ufffd" not in s else tokenizer.sp.id_to_piece(i))  # bytes: <0xE3>
    return names


def token_spans(tokenizer: Tokenizer, text: str, n_tokens: int) -> np.ndarray:
    """(N, 2): for each token, the [start, end) of the characters of ``text`` it belongs to."""
    normalized, owner = _normalized_owners(text, tokenizer.normalize)   # owner (M, 2) over text
    if isinstance(tokenizer, CharTokenizer):
        spans = owner                                                    # a token per normalised char
    else:
        pieces = _piece_chars(tokenizer, normalized)                     # (N, 2) over normalised chars
        spans = np.stack([owner[pieces[:, 0], 0], owner[pieces[:, 1] - 1, 1]], axis=1)
    if len(spans) != n_tokens:  # a bug, not the user's: the encoder and this mapping disagree
        raise AssertionError(f"token spans ({len(spans)}) do not match the tokens ({n_tokens})")
    return spans


def _normalized_owners(text: str, form: str) -> tuple[str, np.ndarray]:
    """The normalised text, and for each of its characters the span of ``text`` it came from.

    Normalisation works within a cluster (a starter and the marks or jamo that follow it), so each
    cluster is normalised on its own and its characters are owned by the whole cluster: a syllable's
    NFD jamo by the syllable, an NFC composite by the characters it composes."""
    if form == "none":
        idx = np.arange(len(text))
        return text, np.stack([idx, idx + 1], axis=1)
    pieces, owner, begin = [], [], 0
    for i in range(1, len(text) + 1):
        if i == len(text) or _is_starter(text[i]):
            piece = normalize_text(text[begin:i], form)
            pieces.append(piece)
            owner.extend([(begin, i)] * len(piece))
            begin = i
    normalized = normalize_text(text, form)
    if "".join(pieces) != normalized:  # a rare cross-cluster composition: share out by position
        m = len(normalized)
        at = (np.arange(m) * len(text)) // max(m, 1)
        return normalized, np.stack([at, at + 1], axis=1)
    return normalized, np.asarray(owner, dtype=np.int64).reshape(-1, 2)


def _piece_chars(tokenizer, normalized: str) -> np.ndarray:
    """(N, 2) [start, end) of each sentencepiece piece over the characters of ``normalized``.

    Sentencepiece's offset mapping gives character offsets and needs no protobuf (its proto
    output does, and protobuf is not a dependency). The leading pieces of a byte-fallback
    character are empty there (begin == end); they are given to the character at begin."""
    try:
        offsets = tokenizer.sp.encode(normalized, return_type="offset_mapping")["offsets"]
    except (TypeError, ValueError, KeyError):   # sentencepiece before offset_mapping: byte offsets
        return _piece_chars_from_bytes(tokenizer, normalized)
    m = len(normalized)
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    first = spans[:, 0]
    last = np.maximum(spans[:, 1], first + 1)                             # empty pieces: their character
    return np.stack([np.clip(first, 0, m - 1), np.clip(last, 1, m)], axis=1)


def _piece_chars_from_bytes(tokenizer, normalized: str) -> np.ndarray:
    """_piece_chars from the byte offsets of sentencepiece's proto output (older sentencepiece)."""
    proto = tokenizer.sp.encode(normalized, out_type="immutable_proto")
    cps = np.frombuffer(normalized.encode("utf-32-le"), dtype="<u4")
    widths = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)      # UTF-8 bytes per character
    byte_start = np.concatenate([[0], np.cumsum(widths)])               # (M+1,)
    begin = np.array([p.begin for p in proto.pieces], dtype=np.int64)
    end = np.array([p.end for p in proto.pieces], dtype=np.int64)
    first = np.searchsorted(byte_start, begin, side="right") - 1         # character holding byte begin
    last = np.searchsorted(byte_start, end, side="left")                 # one past the last character
    last = np.maximum(last, first + 1)                                   # empty pieces: their character
    m = len(normalized)
    return np.stack([np.clip(first, 0, m - 1), np.clip(last, 1, m)], axis=1)
