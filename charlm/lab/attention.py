"""What a transformer's heads look at (`charlm inspect-attention`): the attention counterpart of
inspect-cells.

torch's fused attention keeps no weights, so they are recomputed from each block's own weights
and the inputs it really got (caught by a forward hook while the model reads the text chunk by
chunk, its memory carried, as evaluation reads it). The recomputed weights times the values must
give the output the fused attention produced: the largest difference is reported (``fidelity``).

Per layer and head, over every position of the text (characters: one token each):

- **mean distance**: how far back the attention reaches on average, in tokens (0: the query's
  own token);
- **near**: the share of the attention on the last 8 tokens, the query's own included;
- **partner**: at the position that predicts a closing bracket, the attention on its opening
  partner, for pairs within the model's reach. Beside it, what a look spread evenly over the
  visible tokens would give, and the same head of an untrained model of the same shape (seed
  1234): a head that finds the partner is one way attention does what a recurrent cell must carry
  in its state.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..config import DEFAULT_WINDOW
from ..errors import ConfigError
from ..model import build_model
from ..threads import torch_threads
from ..transformer import rotate
from ..util import csv_text
from .cells import CONTROL_SEED, bracket_depths
from .context import evaluation_text

SCHEMA = "charlm.inspect-attention/1"
NEAR = 8                   # "near": the last this many tokens, the query's own included
DEFAULT_CHARS = 20_000
MAX_CHARS = 200_000


@dataclass
class HeadRow:
    """One head's figures, trained and untrained (the control)."""

    layer: int
    head: int
    mean_distance: float
    near: float
    partner: Optional[float]           # None: no bracket pair within reach
    control_mean_distance: float
    control_near: float
    control_partner: Optional[float]


@dataclass
class AttentionStudy:
    run: str
    inputs: str
    chars: int
    cut: bool                          # the text was cut to its first ``chars`` characters
    window: int
    memory: int
    pairs: int                         # bracket pairs whose opening is within reach of the query
    partner_uniform: Optional[float]   # the partner share of an even look over the visible tokens
    fidelity: float                    # largest |recomputed - fused| attention output
    heads: list[HeadRow] = field(default_factory=list)

    def best_partner(self) -> Optional[HeadRow]:
        rows = [r for r in self.heads if r.partner is not None]
        return max(rows, key=lambda r: r.partner) if rows else None

    def to_json(self) -> dict[str, Any]:
        out = {"schema": SCHEMA, **{k: v for k, v in asdict(self).items() if k != "heads"}}
        out["heads"] = [asdict(r) for r in self.heads]
        return out

    def csv_text(self) -> str:
        names = [f for f in HeadRow.__dataclass_fields__]
        return csv_text([names, *([getattr(r, n) for n in names] for r in self.heads)])


class _Tally:
    """Sums over queries, per (layer, head), as the text is read."""

    def __init__(self, layers: int, heads: int):
        self.distance = np.zeros((layers, heads))
        self.near = np.zeros((layers, heads))
        self.partner = np.zeros((layers, heads))
        self.uniform = 0.0
        self.queries = 0
        self.pairs = 0
        self.fidelity = 0.0


def check_options(chars: Any = None) -> None:
    if chars is not None and (not isinstance(chars, int) or isinstance(chars, bool) or not 1 <= chars <= MAX_CHARS):
        raise ConfigError(f"--chars must be a whole number from 1 to {MAX_CHARS:,}, got {chars!r}")


def check_transformer(model) -> None:
    cell = getattr(getattr(model, "config", None), "cell", None)
    if cell != "transformer":
        raise ConfigError(f"inspect-attention reads a transformer's attention; this model is a {cell}, "
                          f"which has none (`charlm inspect-cells` reads recurrent cells)")


def _read(model, ids: torch.Tensor, pairs_by_query: dict[int, int], tally_layers: int) -> _Tally:
    """Read ids (N,) chunk by chunk with the memory carried; tally every head's attention."""
    config = model.config
    W = config.window or DEFAULT_WINDOW
    heads = config.heads
    tally = _Tally(tally_layers, heads)
    start = {"at": 0}
    queries = np.array(sorted(pairs_by_query), dtype=np.int64)   # the positions that predict a closing bracket
    outputs: dict[int, torch.Tensor] = {}

    def keep_output(index: int):
        def hook(module, args):
            outputs[index] = args[0].detach()      # the fused attention's output, (B, T, D)
        return hook

    def measure(index: int):
        def hook(block, args, _out):
            x, past_k, past_v, mask, cos, sin = args
            B, T, D = x.shape
            d = D // heads
            qkv = block.qkv(block.norm1(x))
            keys = torch.cat([past_k.to(qkv.dtype), qkv[..., D:2 * D]], dim=1)       # (B, P + T, D)
            values = torch.cat([past_v.to(qkv.dtype), qkv[..., 2 * D:]], dim=1)
            P = keys.size(1) - T
            split = lambda t: t.reshape(B, t.size(1), heads, d).transpose(1, 2)      # (B, h, n, d)
            q = rotate(split(qkv[..., :D]), cos[P:], sin[P:])
            kr = rotate(split(keys), cos, sin)
            scores = (q @ kr.transpose(-1, -2)) / math.sqrt(d)                      # (B, h, T, P + T)
            # Which keys each query may see: plainly causal (no memory, no record starts), else the
            # mask the block got, (B, 1, T, P + T).
            visible = (torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]
                       if mask is None else mask)
            weights = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)   # (B, h, T, P + T)
            vis = visible[0, 0].cpu()                                               # (T, P + T)
            recomputed = (weights @ split(values)).transpose(1, 2).reshape(B, T, D)
            tally.fidelity = max(tally.fidelity, float((recomputed - outputs[index]).abs().max()))
            w = weights[0].double().cpu()                                           # (h, T, P + T)
            # Key j of this chunk's view is token start - P + j; query t is token start + t.
            dist = (torch.arange(T)[:, None] + P - torch.arange(P + T)[None, :]).double()   # (T, P + T)
            tally.distance[index] += (w * dist).sum(dim=(1, 2)).numpy()
            tally.near[index] += (w * ((dist >= 0) & (dist < NEAR))).sum(dim=(1, 2)).numpy()
            if index == 0:
                tally.queries += T
            s = start["at"]
            for query in queries[np.searchsorted(queries, s):np.searchsorted(queries, s + T)]:
                t, j = int(query) - s, pairs_by_query[int(query)] - (s - P)
                if not 0 <= j < P + T or not bool(vis[t, j]):
                    continue          # beyond the reach of this query (or cut off by a record start)
                tally.partner[index] += w[:, t, j].numpy()
                if index == 0:
                    tally.pairs += 1
                    tally.uniform += 1.0 / float(vis[t].sum())
        return hook

    handles = []
    for i, block in enumerate(model.blocks):
        handles.append(block.proj.register_forward_pre_hook(keep_output(i)))
        handles.append(block.register_forward_hook(measure(i)))
    try:
        state = model.init_state(1, ids.device)
        with torch.no_grad():
            for s in range(0, len(ids), W):
                start["at"] = s
                _, state = model(ids[s:s + W][None], state)
    finally:
        for h in handles:
            h.remove()
    return tally


def inspect_attention(model, tokenizer, text: str, inputs: str = "text given", chars: Optional[int] = None,
                      run: str = "", threads: Optional[int] = None) -> AttentionStudy:
    """Every head's reach and its look at bracket partners, beside an untrained control."""
    check_transformer(model)
    check_options(chars)
    limit = chars or DEFAULT_CHARS
    cut = len(text) > limit
    text = text[:limit]
    ids = tokenizer.encode(text)
    if len(ids) != len(text):
        raise ConfigError("inspect-attention reads character positions, so it needs a model whose tokens "
                          "are characters (--tokenizer char)")
    if len(ids) < 2:
        raise ConfigError("the text is too short to read: give at least 2 characters")
    _, pairs = bracket_depths(text)
    # The query that predicts a closing bracket is the token before it; it should find the opening.
    pairs_by_query = {close - 1: opening for opening, close, _ in pairs if close - 1 >= opening}
    device = next(model.parameters()).device
    x = torch.as_tensor(ids, dtype=torch.long, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CONTROL_SEED)
        control = build_model(model.config).to(device)
    was = model.training
    model.eval()
    control.eval()
    try:
        with torch_threads(threads):
            trained = _read(model, x, pairs_by_query, model.config.layers)
            untrained = _read(control, x, pairs_by_query, model.config.layers)
    finally:
        model.train(was)
    q, n = max(trained.queries, 1), trained.pairs
    rows = [HeadRow(layer=l, head=h,
                    mean_distance=float(trained.distance[l, h] / q), near=float(trained.near[l, h] / q),
                    partner=float(trained.partner[l, h] / n) if n else None,
                    control_mean_distance=float(untrained.distance[l, h] / q),
                    control_near=float(untrained.near[l, h] / q),
                    control_partner=float(untrained.partner[l, h] / n) if n else None)
            for l in range(model.config.layers) for h in range(model.config.heads)]
    return AttentionStudy(run=run, inputs=inputs, chars=len(text), cut=cut,
                          window=model.config.window or DEFAULT_WINDOW, memory=model.config.memory, pairs=n,
                          partner_uniform=trained.uniform / n if n else None,
                          fidelity=max(trained.fidelity, untrained.fidelity), heads=rows)


def study(lm, file: Optional[str | Path] = None, text: Optional[str] = None, chars: Optional[int] = None,
          threads: Optional[int] = None) -> AttentionStudy:
    """What the heads of a loaded transformer (``charlm.load(run)``) look at, on ``text``, else
    ``file``, else the run's validation split (its first ``chars`` characters)."""
    check_transformer(lm.model)
    check_options(chars)
    if text is None:
        text, inputs = evaluation_text(lm.checkpoint, None if file is None else str(file))
    else:
        inputs = "text given"
    return inspect_attention(lm.model, lm.tokenizer, text, inputs, chars, str(lm.path), threads)
