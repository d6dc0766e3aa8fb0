"""The fourth system: a small causal Transformer on the same chunks as the recurrent models.

Token embedding -> ``layers`` pre-LayerNorm blocks (multi-head causal self-attention through
torch's ``F.scaled_dot_product_attention``, then a GELU MLP of width 4D) -> LayerNorm -> Linear.
The width D is ``--hidden-size``; the attention window is the BPTT chunk ``--seq-len`` (W).

Positions are rotary (Su et al. 2021): queries and keys are rotated by an angle proportional to
their position, so a score depends only on the distance between two tokens. That is what lets
keys survive a move into the next chunk's memory, and it needs no position table, so no window
is too long for the model.

Memory (``--memory M``, Transformer-XL: Dai et al. 2019). Each layer's keys and values of the last
M tokens read are the model's state, carried into the next chunk and detached at its border (by
the trainer, as it detaches a recurrent state): token t of a chunk attends to the M remembered
tokens and to tokens 0..t of its own chunk, so it sees M + t + 1 tokens, and the gradient stops at
the chunk start. Keys are kept before rotation and rotated with the positions of the chunk that
reads them. Without memory (M = 0) a chunk is a window and nothing is carried: the state is
empty tensors, and every chunk starts from nothing.

The state, like a recurrent one, is a tuple of tensors whose first two dimensions are
(layers, B): keys (L, B, M, D), values (L, B, M, D) and which of the M slots hold a token,
``filled`` (L, B, M) as 0/1 floats (the same for every layer; kept per layer so that the trainer
and the checkpoint treat every tensor the same way). A slot is empty at the start of a stream and
after a record start (``reset``), where attention must not reach back.

Generation uses another form of the state (``step_state``): per layer, the keys and values of the
last W + M - 1 tokens (the most any token saw in training) and which of them are filled, as a
sliding window. ``read`` runs a block of tokens against it, so a prime is read W + M tokens at a time,
and ``stepper`` is ``read`` of one token.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import DEFAULT_WINDOW, ModelConfig

State = tuple[torch.Tensor, ...]
ROTARY_BASE = 10000.0


def rotary(positions: int, dim: int, device: torch.device,
           dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables (positions, dim) that ``rotate`` multiplies by, in float32 (or float64 for a
    float64 model: the tests compare in float64).

    Dimension i < dim/2 is paired with dim - 1 - i and the pair turned by the angle position *
    base^(-2i / dim): cos is (cos a_i, ..., cos a_i) laid out as the pairs are, sin carries the
    signs of the rotation, (-sin a_i on the first member, +sin a_i on the second).
    """
    inv = ROTARY_BASE ** (-torch.arange(0, dim, 2, device=device, dtype=dtype) / dim)
    angle = torch.arange(positions, device=device, dtype=dtype)[:, None] * inv   # (n, dim/2)
    cos, sin = angle.cos(), angle.sin()
    return torch.cat([cos, cos.flip(-1)], dim=-1), torch.cat([-sin, sin.flip(-1)], dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Turn each pair (x_i, x_(d-1-i)) of x (..., d) by its angle; cos and sin (..., d) from
    ``rotary`` broadcast against x's leading dimensions. Pairing i with d - 1 - i makes the
    partner of every dimension x.flip(-1): two products and a sum, cheap where a step is bound by
    its count of kernels (a small model on a CPU)."""
    return torch.addcmul(x * cos.to(x.dtype), x.flip(-1), sin.to(x.dtype))


class Block(nn.Module):
    """x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)): one pre-norm decoder block."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                mask: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) after P remembered tokens, whose unrotated keys and values are past_k and
        past_v (B, P, D). ``mask`` (B, 1, T, P + T) says which keys each query may see (True:
        may); None means plainly causal with P = 0. cos, sin: (P + T, d), see ``rotary``.

        Returns the new x (B, T, D) and the keys and values of all P + T tokens, unrotated.
        """
        B, T, D = x.shape
        h, d = self.heads, D // self.heads
        qkv = self.qkv(self.norm1(x))                                       # (B, T, 3D)
        v = qkv[..., 2 * D:]
        split = lambda t: t.reshape(B, t.size(1), h, d).transpose(1, 2)     # (B, h, n, d)
        if past_k.size(1) == 0:
            # Nothing remembered: queries and keys share their positions, so one rotation turns
            # both (fewer, larger kernels: at these sizes a CPU step is bound by their count).
            qk = rotate(qkv[..., :2 * D].view(B, T, 2, h, d), cos[:, None, None], sin[:, None, None])
            q, kr = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2)
            keys, values = qkv[..., D:2 * D], v
        else:
            keys = torch.cat([past_k.to(qkv.dtype), qkv[..., D:2 * D]], dim=1)   # (B, P + T, D)
            values = torch.cat([past_v.to(qkv.dtype), v], dim=1)
            P = keys.size(1) - T
            q = rotate(split(qkv[..., :D]), cos[P:], sin[P:])
            kr = rotate(split(keys), cos, sin)
        p = self.dropout if self.training else 0.0
        if mask is None:
            a = F.scaled_dot_product_attention(q, kr, split(values), dropout_p=p, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, kr, split(values), attn_mask=mask, dropout_p=p)   # (B, h, T, d)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, D)))    # (B, T, D)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, keys, values


class CharTransformer(nn.Module):
    """The language model's interface (as CharRNN's): ``forward(x, state, reset)`` -> logits
    (B, T, V) and the new state; ``init_state``; ``step_state``, ``read`` and ``stepper`` for
    generation. See the module docstring for the state."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        D = c.hidden_size
        self.embed = nn.Embedding(c.vocab_size, D)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(D, c.heads, c.dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, c.vocab_size)
        self._init_weights()
        self._tables: dict = {}     # the last rotary tables made (not weights: never saved)
        if c.tie_weights:
            self.head.weight = self.embed.weight

    def _init_weights(self) -> None:
        # GPT-2's initialisation: N(0, 0.02) for matrices and embeddings, zero biases, and the two
        # projections that write into the residual stream scaled down by sqrt(2 * layers), so the
        # stream's variance does not grow with depth.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for b in self.blocks:
            for w in (b.proj.weight, b.mlp[2].weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * self.config.layers))

    @property
    def reach(self) -> int:
        """The most tokens any prediction can see, itself included: window + memory."""
        return (self.config.window or DEFAULT_WINDOW) + self.config.memory

    def _rotary(self, positions: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary tables for 0..positions-1, in the dtype the attention computes in (bf16 under
        bf16 autocast), kept from call to call: a chunk reuses its length."""
        dtype = self.embed.weight.dtype
        if torch.is_autocast_enabled(device.type) and dtype == torch.float32:
            dtype = torch.get_autocast_dtype(device.type)
        key = (positions, device, dtype)
        if torch.jit.is_tracing():    # an export records the tables' arithmetic, for any length
            cos, sin = rotary(positions, self.config.hidden_size // self.config.heads, device, torch.float32)
            return cos.to(dtype), sin.to(dtype)
        if self._tables.get("key") != key:
            exact = torch.float64 if dtype == torch.float64 else torch.float32    # made exactly, then cast
            cos, sin = rotary(positions, self.config.hidden_size // self.config.heads, device, exact)
            self._tables = {"key": key, "tables": (cos.to(dtype), sin.to(dtype))}
        return self._tables["tables"]

    def chunk_length(self, most: int) -> int:
        """Tokens per ``forward`` call when reading a text (evaluation, scoring): the window, as in
        training, so every token sees what it saw there (memory + its place in the chunk)."""
        return self.config.window or DEFAULT_WINDOW

    def flatten_parameters(self) -> None:
        """Nothing to flatten (a recurrent module's cuDNN buffer); here for the common interface."""

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- training and evaluation: chunks with memory -------------------------------------------

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        L, M, D = self.config.layers, self.config.memory, self.config.hidden_size
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=self.embed.weight.dtype)
        return zeros(L, batch_size, M, D), zeros(L, batch_size, M, D), zeros(L, batch_size, M)

    def forward(self, x: torch.Tensor, state: Optional[State] = None,
                reset: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, V) for ids x (B, T) after the remembered tokens in ``state``, and the new
        state (the last M tokens' keys and values). ``reset`` (B, T) bool: a record starts at that
        token, which sees nothing before it (nor does any token after it in the chunk)."""
        B, T = x.shape
        M = self.config.memory
        if state is None:
            state = self.init_state(B, x.device)
        mem_k, mem_v, filled = state                                          # (L, B, M, D), (L, B, M)
        seg = reset.long().cumsum(dim=1) if reset is not None and bool(reset.any()) else None   # (B, T)
        mem_ok = filled[0] > 0.5                                              # (B, M)
        mask = None
        if M or seg is not None:
            mask = self._chunk_mask(T, mem_ok, seg)                           # (B, 1, T, M + T)
        cos, sin = self._rotary(M + T, x.device)
        h = self.drop(self.embed(x))                                          # (B, T, D)
        new_k, new_v = [], []
        for layer, block in enumerate(self.blocks):
            h, keys, values = block(h, mem_k[layer], mem_v[layer], mask, cos, sin)   # keys (B, M + T, D)
            new_k.append(keys[:, keys.size(1) - M:])
            new_v.append(values[:, values.size(1) - M:])
        logits = self.head(self.drop(self.norm(h)))                           # (B, T, V)
        # Which of the kept slots a later chunk may see: a remembered token only if no record
        # started since; a token of this chunk only if it is in the record the chunk ends in.
        if seg is None:
            ok = torch.cat([mem_ok, torch.ones(B, T, dtype=torch.bool, device=x.device)], dim=1)
        else:
            ok = torch.cat([mem_ok & (seg[:, -1:] == 0), seg == seg[:, -1:]], dim=1)   # (B, M + T)
        kept = ok[:, ok.size(1) - M:].to(filled.dtype).unsqueeze(0).expand(len(self.blocks), -1, -1)
        return logits, (torch.stack(new_k), torch.stack(new_v), kept.contiguous())

    @staticmethod
    def _chunk_mask(T: int, mem_ok: torch.Tensor, seg: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, 1, T, M + T) bool: query t sees the filled memory slots (when no record started
        before it in the chunk) and tokens 0..t of the chunk (of its own record)."""
        B, M = mem_ok.shape
        causal = torch.ones(T, T, dtype=torch.bool, device=mem_ok.device).tril()       # (T, T)
        mem = mem_ok[:, None, :].expand(B, T, M)                                        # (B, T, M)
        cur = causal.expand(B, T, T)
        if seg is not None:
            mem = mem & (seg == 0)[:, :, None]
            cur = cur & (seg[:, :, None] == seg[:, None, :])
        return torch.cat([mem, cur], dim=2).unsqueeze(1)

    # -- generation: a sliding window over the last W + M - 1 tokens ----------------------------

    def step_state(self, batch_size: int, device: torch.device | str = "cpu") -> list[State]:
        """An empty generation cache: per layer (keys (B, P, D), values (B, P, D), filled (B, P))
        with P = window + memory - 1 slots."""
        P, D = self.reach - 1, self.config.hidden_size
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=self.embed.weight.dtype)
        return [(zeros(batch_size, P, D), zeros(batch_size, P, D), zeros(batch_size, P))
                for _ in self.blocks]

    def read(self, x: torch.Tensor, cache: list[State]) -> tuple[torch.Tensor, list[State]]:
        """Logits (B, T, V) for ids x (B, T) read after the cache, each token seeing at most the
        W + M - 1 tokens before it, and the cache moved on by T tokens."""
        features, cache = self.read_features(x, cache)
        return self.head(features), cache

    def read_features(self, x: torch.Tensor, cache: list[State]) -> tuple[torch.Tensor, list[State]]:
        """``read`` up to what the head reads: the final normed stream (B, T, D), and the cache."""
        if x.size(1) > self.reach:   # a long text in blocks: attention is quadratic in the block
            pieces = []
            for i in range(0, x.size(1), self.reach):
                features, cache = self.read_features(x[:, i:i + self.reach], cache)
                pieces.append(features)
            return torch.cat(pieces, dim=1), cache
        B, T = x.shape
        P = cache[0][0].size(1)
        filled = cache[0][2] > 0.5                                                # (B, P)
        # Query t (position P + t) sees key j when j is filled, and t <= j <= P + t: no further
        # back than P tokens, and nothing after itself.
        j = torch.arange(P + T, device=x.device)
        t = torch.arange(T, device=x.device)[:, None]
        window = (j >= t) & (j <= P + t)                                           # (T, P + T)
        ok = torch.cat([filled, torch.ones(B, T, dtype=torch.bool, device=x.device)], dim=1)  # (B, P + T)
        mask = (window[None] & ok[:, None, :]).unsqueeze(1)                        # (B, 1, T, P + T)
        cos, sin = self._rotary(P + T, x.device)
        h = self.embed(x)
        out = []
        for block, (k, v, _) in zip(self.blocks, cache):
            h, keys, values = block(h, k, v, mask, cos, sin)
            kept = ok[:, T:].to(k.dtype)
            out.append((keys[:, T:].to(k.dtype), values[:, T:].to(k.dtype), kept))
        return self.norm(h), out

    def stepper(self, column_major: bool = False) -> Callable[[torch.Tensor, list[State]], tuple[torch.Tensor, list[State]]]:
        """One token per sequence: (ids (B,), cache) -> (logits (B, V), cache). ``column_major``
        is a recurrent model's layout trick; it does not apply here."""

        def step(ids: torch.Tensor, cache: list[State]) -> tuple[torch.Tensor, list[State]]:
            with torch.no_grad():
                logits, cache = self.read(ids[:, None], cache)
                return logits[:, 0], cache

        return step
