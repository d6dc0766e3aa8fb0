"""Gradients through time: how far back does the gradient of a loss reach?

For a loss L at the last position T of a window, we measure ||dL/dh_t|| for every earlier step t,
per layer (and ||dL/dc_t|| for an LSTM's cell state), and report it by lag = T - t.

Why not just call the module? The fused cuDNN/oneDNN kernels run the whole recurrence inside one
op, so the output tensor at step t has no graph edge to step t+1: autograd gives zero along it.
So we run the *same* module (its own weight tensors) one step and one layer at a time, with the
state passed by hand, keep every h_t (and c_t), and backpropagate the loss at the last step once.
The cell equations below are PyTorch's documented ones; tests check them against the fused module
(same outputs, same lag-0 gradient).

minGRU and minLSTM (charlm/mincells.py) train with a parallel scan, which has the same blind spot;
they are unrolled with their own one-step form on a float64 copy of the module, keeping every h_t.
For them the "top" output is the stack's output (the residual stream the head reads), and the
state of each layer is its h.

Everything runs in float64 on the CPU by default, so a tanh RNN's gradient (often 1e-40 of its
lag-0 value after a couple of hundred steps) does not underflow to zero before we can see it.

Aggregation over windows (``samples``): the geometric mean of the norms at each lag (the right
average for quantities that shrink multiplicatively), with the 10th and 90th percentiles as the
spread. Summary figures are read off the geometric-mean curve:
- decay per step: exp of the least-squares slope of ln(norm) against lag (lags 1..N);
- horizon: the first lag whose norm is below ``HORIZON_RATIO`` (1e-3) of the lag-0 norm, else None;
- explodes: the fitted factor per step is above 1 and the norm at the last lag exceeds lag 0's.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import Checkpoint, load_model
from ..config import CELLS, ModelConfig
from ..corpus.text import Corpus
from ..corpus.tokenizers import CharTokenizer
from ..errors import CharLMError, ConfigError
from ..limits import check_fits, check_model_fits, trace_bytes
from ..mincells import MinRNN
from ..model import build_model
from ..plotting import check_plot_path, new_figure, save_figure
from ..threads import torch_threads
from ..util import csv_text, json_safe

HORIZON_RATIO = 1e-3
SCHEMA = "charlm.inspect-gradients/1"
AGGREGATE = "geometric mean over windows; spread = 10th and 90th percentiles"


# ----------------------------------------------------------------------------------------------
# One step of one layer, with the module's own weights.

def _layer_weights(rnn: nn.RNNBase, layer: int, dtype: torch.dtype) -> tuple:
    """(w_ih, w_hh, b_ih, b_hh) of one layer, detached (we want gradients of states, not weights)."""
    get = lambda name: getattr(rnn, f"{name}_l{layer}", None)
    cast = lambda p: None if p is None else p.detach().to(dtype)
    return cast(get("weight_ih")), cast(get("weight_hh")), cast(get("bias_ih")), cast(get("bias_hh"))


def _affine(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return F.linear(x, w, b)


def _cell_step(mode: str, x: torch.Tensor, state: tuple, weights: tuple) -> tuple:
    """One time step of one layer. x (B, I), state (h,) or (h, c) each (B, H). Returns new state.

    mode is nn.RNNBase.mode: 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU'; gate order as in PyTorch.
    """
    w_ih, w_hh, b_ih, b_hh = weights
    h = state[0]
    if mode in ("RNN_TANH", "RNN_RELU"):
        pre = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
        return (torch.tanh(pre) if mode == "RNN_TANH" else torch.relu(pre),)
    if mode == "LSTM":
        gates = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)          # (B, 4H): i, f, g, o
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if mode == "GRU":
        gi = _affine(x, w_ih, b_ih)                                       # (B, 3H): r, z, n
        gh = _affine(h, w_hh, b_hh)
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return ((1 - z) * n + z * h,)
    raise ConfigError(f"cannot inspect a recurrent module of mode {mode!r}")


def _check_module(rnn: nn.RNNBase) -> None:
    if getattr(rnn, "bidirectional", False) or getattr(rnn, "proj_size", 0):
        raise ConfigError("inspect-gradients supports unidirectional recurrent modules without projections")
    if not getattr(rnn, "batch_first", False):
        raise ConfigError("inspect-gradients expects a batch_first recurrent module")


@dataclass
class Trace:
    """Per-step gradient norms of one backward pass.

    norms[(layer, "h")] is (T, B): ||dL/dh_t|| for t = 0..T-1 and each window b (also "c" for LSTM).
    states[(layer, "h")] is (T, B, H): the states themselves (detached), for checks.
    loss: the per-window losses (B,).
    """

    norms: dict[tuple[int, str], torch.Tensor]
    states: dict[tuple[int, str], torch.Tensor]
    loss: torch.Tensor


def unrolled(rnn: nn.RNNBase, inputs: torch.Tensor, state: Optional[tuple] = None,
             dtype: torch.dtype = torch.float64) -> tuple[list[list[tuple]], torch.Tensor]:
    """Run rnn one step and one layer at a time. inputs (B, T, I); state: tensors (layers, B, H).

    Returns steps[t][layer] = (h,) or (h, c) each (B, H) with their graph, and the top layer's
    outputs stacked (B, T, H) (for a MinRNN, the stack's output).
    """
    _check_module(rnn)
    if isinstance(rnn, MinRNN):
        return _unrolled_min(rnn, inputs, state, dtype)
    B, T, _ = inputs.shape
    L, H = rnn.num_layers, rnn.hidden_size
    n_state = 2 if rnn.mode == "LSTM" else 1
    # The inputs are the graph's leaves (weights are detached), so every h_t gets a grad_fn.
    x_all = inputs.to(dtype)
    if not x_all.requires_grad:
        x_all = x_all.detach().requires_grad_(True)
    if state is None:
        state = tuple(torch.zeros(L, B, H, dtype=dtype, device=inputs.device) for _ in range(n_state))
    weights = [_layer_weights(rnn, l, dtype) for l in range(L)]
    current = [tuple(s[l].detach().to(dtype) for s in state) for l in range(L)]
    steps = []
    for t in range(T):
        x = x_all[:, t]                                                   # (B, I)
        per_layer = []
        for l in range(L):
            current[l] = _cell_step(rnn.mode, x, current[l], weights[l])
            per_layer.append(current[l])
            x = current[l][0]                                             # (B, H) into the next layer
        steps.append(per_layer)
    top = torch.stack([s[-1][0] for s in steps], dim=1)                   # (B, T, H)
    return steps, top


def _unrolled_min(rnn: MinRNN, inputs: torch.Tensor, state: Optional[tuple],
                  dtype: torch.dtype) -> tuple[list[list[tuple]], torch.Tensor]:
    """``unrolled`` for a minGRU/minLSTM stack: its one-step form (MinRNN.step), step after step.

    A detached copy in ``dtype`` stands in for the module (the same weights, no gradient to them,
    eval mode: no dropout), so the inputs are the graph's only leaves, as for the nn modules.
    """
    twin = copy.deepcopy(rnn).to(dtype=dtype).requires_grad_(False).eval()
    x_all = inputs.to(dtype)
    if not x_all.requires_grad:
        x_all = x_all.detach().requires_grad_(True)
    h = None if state is None else [s.detach().to(dtype) for s in state[0]]   # one (B, H) per layer
    steps, outs = [], []
    for t in range(inputs.size(1)):
        y, h = twin.step(x_all[:, t], h)                                  # (B, H), one (B, H) per layer
        steps.append([(h_l,) for h_l in h])
        outs.append(y)
    return steps, torch.stack(outs, dim=1)                                # (B, T, H)


def trace_gradients(rnn: nn.RNNBase, inputs: torch.Tensor,
                    loss_fn: Callable[[torch.Tensor], torch.Tensor],
                    state: Optional[tuple] = None, dtype: torch.dtype = torch.float64) -> Trace:
    """||dL/dh_t|| for every step t and layer, where L = loss_fn(top-layer h at the last step).

    loss_fn maps (B, H) to per-window losses (B,); windows do not interact, so one backward of
    their sum gives each window's own gradient.
    """
    steps, top = unrolled(rnn, inputs, state, dtype)
    losses = loss_fn(top[:, -1])                                          # (B,)
    names = ("h", "c") if rnn.mode == "LSTM" else ("h",)
    keys = [(l, q) for l in range(rnn.num_layers) for q in range(len(names))]
    flat = [steps[t][l][q] for t in range(len(steps)) for (l, q) in keys]
    # One backward pass for every state at once (torch.autograd.grad leaves .grad of the
    # model's parameters alone, which matters when this runs inside a training loop).
    grads = torch.autograd.grad(losses.sum(), flat, allow_unused=True)
    norms, states = {}, {}
    for j, (l, q) in enumerate(keys):
        gs = [grads[t * len(keys) + j] for t in range(len(steps))]
        ref = flat[j]
        gs = [torch.zeros_like(ref) if g is None else g for g in gs]
        norms[(l, names[q])] = torch.stack([g.norm(dim=-1) for g in gs]).detach()        # (T, B)
        states[(l, names[q])] = torch.stack([steps[t][l][q] for t in range(len(steps))]).detach()
    return Trace(norms=norms, states=states, loss=losses.detach())


# ----------------------------------------------------------------------------------------------
# Curves and their summary figures

@dataclass
class Curve:
    """The gradient norm against lag for one layer and one state (h or c) of one model."""

    layer: int
    state: str                    # "h" or "c"
    lags: list[int]               # 0..N
    gmean: list[float]            # geometric mean over windows of ||dL/d state_{T-lag}||
    p10: list[float]
    p90: list[float]
    relative: list[float]         # gmean / gmean[0]
    decay_per_step: float         # exp(fitted slope of ln norm against lag); < 1 vanishes
    log10_slope: float            # the same slope, in decades per step
    horizon: Optional[int]        # first lag with relative < HORIZON_RATIO; None: beyond N
    explodes: bool

    @property
    def label(self) -> str:
        return f"{self.state}[{self.layer}]"


def summarize(norms: torch.Tensor, layer: int, state: str) -> Curve:
    """norms (T, B) by time -> a Curve by lag (lag 0 is the last step)."""
    by_lag = norms.flip(0).double().cpu().numpy()                         # (N+1, B)
    tiny = np.finfo(np.float64).tiny
    logs = np.log(np.maximum(by_lag, tiny))
    gmean = np.exp(logs.mean(axis=1))
    p10, p90 = np.percentile(by_lag, [10, 90], axis=1)
    n = len(gmean)
    ref = gmean[0] if gmean[0] > 0 else float("nan")
    relative = gmean / ref
    # Fit ln(norm) = a + b * lag on lags 1..N, leaving out values that hit the floor.
    lags = np.arange(n)
    ok = (lags >= 1) & (gmean > tiny * 1e6)
    if ok.sum() >= 2:
        slope = float(np.polyfit(lags[ok], np.log(gmean[ok]), 1)[0])
    else:
        slope = float("nan")
    below = np.nonzero(relative[1:] < HORIZON_RATIO)[0]
    horizon = int(below[0]) + 1 if len(below) else None
    explodes = bool(math.isfinite(slope) and slope > 0 and relative[-1] > 1.0)
    return Curve(layer=layer, state=state, lags=lags.tolist(), gmean=gmean.tolist(), p10=p10.tolist(),
                 p90=p90.tolist(), relative=relative.tolist(), decay_per_step=math.exp(slope)
                 if math.isfinite(slope) else float("nan"), log10_slope=slope / math.log(10),
                 horizon=horizon, explodes=explodes)


# Largest |f'| of each gate's nonlinearity: the gamma of Pascanu, Mikolov & Bengio (2013).
GATES = {"RNN_TANH": [("all", "tanh")], "RNN_RELU": [("all", "relu")],
         "LSTM": [("input", "sigmoid"), ("forget", "sigmoid"), ("cell", "tanh"), ("output", "sigmoid")],
         "GRU": [("reset", "sigmoid"), ("update", "sigmoid"), ("new", "tanh")]}
GAMMA = {"tanh": 1.0, "relu": 1.0, "sigmoid": 0.25}


def spectral_report(rnn: nn.RNNBase) -> list[dict[str, Any]]:
    """Largest singular value of each recurrent weight matrix (per gate block for LSTM/GRU).

    Pascanu et al. (2013): for h_t = W f(h_{t-1}) + ..., if sigma_max(W) < 1/gamma with
    gamma = max |f'| (1 for tanh, 1/4 for sigmoid), the gradient vanishes exponentially. It is a
    sufficient condition, not a necessary one. It applies to the plain RNN; an LSTM's cell state
    and a GRU's (1 - z) * h path bypass W_hh, so for gated cells we report each block against its
    bound but state the condition as "n/a". minGRU and minLSTM have no recurrent matrix at all
    (their gates read only the input): no rows.
    """
    if isinstance(rnn, MinRNN):
        return []
    rows = []
    gated = rnn.mode in ("LSTM", "GRU")
    for l in range(rnn.num_layers):
        w = getattr(rnn, f"weight_hh_l{l}").detach().double().cpu()
        blocks = GATES[rnn.mode]
        parts = w.chunk(len(blocks), dim=0)
        for (block, fn), part in zip(blocks, parts):
            sigma = float(torch.linalg.matrix_norm(part, ord=2))
            bound = 1.0 / GAMMA[fn]
            below = sigma < bound
            rows.append({"layer": l, "matrix": f"weight_hh_l{l}", "block": block, "nonlinearity": fn,
                         "sigma_max": sigma, "gamma": GAMMA[fn], "bound": bound, "below_bound": below,
                         "condition": "n/a" if gated else ("met" if below else "not met")})
    return rows


@dataclass
class ModelGradients:
    """Everything measured for one model."""

    name: str
    cell: str
    source: str                   # "fresh" or the checkpoint path
    hidden_size: int
    layers: int
    embedding_size: int
    vocab_size: int
    chunk_length: Optional[int]   # the BPTT k the checkpoint was trained with; None when fresh
    loss: float                   # mean loss at the last position (nats)
    curves: list[Curve]
    spectral: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return json_safe(d)


@dataclass
class GradientStudy:
    """One run of inspect-gradients: the settings and every model's measurements."""

    lags: int
    samples: int
    seed: int
    warmup: int
    inputs: str
    models: list[ModelGradients] = field(default_factory=list)
    dtype: str = "float64"

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA,
                "settings": {"lags": self.lags, "samples": self.samples, "seed": self.seed,
                             "warmup": self.warmup, "inputs": self.inputs, "dtype": self.dtype,
                             "aggregate": AGGREGATE, "horizon_ratio": HORIZON_RATIO},
                "models": [m.to_json() for m in self.models]}

    def csv_rows(self) -> list[list[Any]]:
        """One row per (model, layer, state, lag), with the curve's summary repeated on each."""
        rows = [["model", "cell", "layer", "state", "lag", "gmean", "p10", "p90", "relative",
                 "decay_per_step", "horizon", "explodes", "sigma_max_whh", "chunk_length"]]
        for m in self.models:
            sig = {}
            for s in m.spectral:  # largest over blocks of each layer's W_hh
                sig[s["layer"]] = max(sig.get(s["layer"], 0.0), s["sigma_max"])
            for c in m.curves:
                for lag in c.lags:
                    rows.append([m.name, m.cell, c.layer, c.state, lag, c.gmean[lag], c.p10[lag],
                                 c.p90[lag], c.relative[lag], c.decay_per_step,
                                 "" if c.horizon is None else c.horizon, int(c.explodes),
                                 sig.get(c.layer, ""), "" if m.chunk_length is None else m.chunk_length])
        return rows

    def csv_text(self) -> str:
        return csv_text(self.csv_rows())


# ----------------------------------------------------------------------------------------------
# A CharRNN language model: windows of token ids -> curves

def measure_model(model, ids: torch.Tensor, warmup: int = 0, state: Optional[tuple] = None,
                  dtype: torch.dtype = torch.float64) -> tuple[list[Curve], float]:
    """Curves for a charlm.model.CharRNN on windows ids (B, warmup + N + 2).

    The first ``warmup`` tokens run through the fused module without gradient to give a realistic
    starting state; then N+1 tokens x_0..x_N are unrolled step by step and the loss is the
    cross-entropy of predicting the last token from h_N (one loss per window, last position only).
    Dropout is off (the measurement is of the function the model computes at test time).
    """
    if ids.size(1) < warmup + 2:
        raise ConfigError("windows are too short for the lags asked for")
    ids = ids.to(next(model.parameters()).device)
    if model.config.cell == "transformer":
        return measure_transformer(model, ids, warmup, dtype, state)
    if state is None and warmup > 0:
        with torch.no_grad():
            was = model.training
            model.eval()
            _, state = model(ids[:, :warmup])
            model.train(was)
    x, target = ids[:, warmup:-1], ids[:, -1]                             # (B, N+1), (B,)
    emb = model.embed(x).detach()                                         # (B, N+1, E)
    w_head = model.head.weight.detach().to(dtype)
    b_head = model.head.bias.detach().to(dtype)

    def loss_fn(h_last: torch.Tensor) -> torch.Tensor:                     # (B, H) -> (B,)
        return F.cross_entropy(F.linear(h_last, w_head, b_head), target, reduction="none")

    with torch.enable_grad():
        trace = trace_gradients(model.rnn, emb, loss_fn, state=state, dtype=dtype)
    curves = [summarize(n, l, q) for (l, q), n in trace.norms.items()]
    return curves, float(trace.loss.mean())


def measure_transformer(model, ids: torch.Tensor, warmup: int = 0, dtype: torch.dtype = torch.float64,
                        state: Optional[tuple] = None) -> tuple[list[Curve], float]:
    """Curves for a transformer (charlm/transformer.py) on windows ids (B, warmup + N + 2): the
    norm of dL/dx_t, x the residual stream entering each block (layer 0: the token embeddings),
    for a loss at the last position of a chunk, by lag.

    The text is read as training reads it: chunks of the window W with the memory carried and
    detached at each border. The measured loss is at the last position of the last chunk, which
    sees its W tokens in one attention hop and the memory through the forward pass only, so the
    curve is exactly zero at lags >= W (and so beyond W + memory): the attention counterpart of
    truncated BPTT. The chunks before the last one (warm-up included) fill the memory, starting
    from ``state`` (a training chunk's carried memory) when given.
    """
    m = copy.deepcopy(model).to(dtype).eval()
    W = m.chunk_length(0)
    x, target = ids[:, :-1], ids[:, -1]                                    # (B, warmup + N + 1), (B,)
    n = ids.size(1) - 1 - warmup                                           # N + 1 positions measured
    last = max(0, x.size(1) - W)                                           # where the last chunk starts
    if state is not None:
        state = tuple(t.to(dtype) for t in state)
    with torch.no_grad():
        for i in range(0, last, W):                                        # the memory, as in training
            _, state = m(x[:, i:min(i + W, last)], state)
    if state is None:
        state = m.init_state(x.size(0), x.device)
    chunk = x[:, last:]                                                    # (B, T), T <= W
    T = chunk.size(1)
    mem_k, mem_v, filled = (s.to(dtype) for s in state)
    M = m.config.memory
    mask = m._chunk_mask(T, filled[0] > 0.5, None) if M else None
    cos, sin = m._rotary(M + T, x.device)
    with torch.enable_grad():
        h = m.embed(chunk).detach().requires_grad_(True)                   # (B, T, D)
        inputs = [h]
        for layer, block in enumerate(m.blocks):
            if layer:
                h.retain_grad()
                inputs.append(h)
            h, _, _ = block(h, mem_k[layer], mem_v[layer], mask, cos, sin)
        losses = F.cross_entropy(m.head(m.norm(h[:, -1])), target, reduction="none")   # (B,)
        losses.sum().backward()
    curves = []
    for layer, h_in in enumerate(inputs):
        norms = torch.zeros(n, x.size(0), dtype=dtype)                     # (N+1, B) by time
        got = h_in.grad.norm(dim=-1).T                                     # (T, B)
        keep = min(T, n)
        norms[n - keep:] = got[T - keep:]
        curves.append(summarize(norms, layer, "x"))
    return curves, float(losses.detach().mean())


def text_windows(ids: np.ndarray, samples: int, length: int, generator: np.random.Generator,
                 lags_option: str = "--lags", longer: str = "a longer --corpus") -> torch.Tensor:
    """samples windows of length tokens at random offsets of ids (N,) -> (samples, length).
    ``lags_option`` and ``longer`` name, in the error, the options of the command that asked."""
    n = len(ids)
    if n < length + 1:
        raise ConfigError(f"the text has {n} tokens, too few for windows of {length} "
                          f"({lags_option} plus warm-up); lower {lags_option} or give {longer}")
    starts = generator.integers(0, n - length, size=samples)
    return torch.from_numpy(np.stack([np.asarray(ids[s:s + length], dtype=np.int64) for s in starts]))


def read_text(spec: str, limit: int = 4_000_000) -> str:
    """Up to ``limit`` characters of a corpus (file, folder, catalog name or builtin)."""
    parts, size = [], 0
    for block in Corpus.resolve(spec).blocks():
        parts.append(block)
        size += len(block)
        if size >= limit:
            break
    return "".join(parts)[:limit]


def inspect_model(model, name: str, ids: torch.Tensor, warmup: int, source: str = "fresh",
                  chunk_length: Optional[int] = None, dtype: torch.dtype = torch.float64) -> ModelGradients:
    c = model.config
    was = model.training
    model.eval()
    try:
        curves, loss = measure_model(model, ids, warmup, dtype=dtype)
    finally:
        model.train(was)
    return ModelGradients(name=name, cell=c.cell, source=source, hidden_size=c.hidden_size,
                          layers=c.layers, embedding_size=c.embedding_size, vocab_size=c.vocab_size,
                          chunk_length=chunk_length, loss=loss, curves=curves,
                          spectral=spectral_report(model.rnn) if hasattr(model, "rnn") else [])


def study_of_trained(model, tokenizer, ckpt: Checkpoint, source: str, corpus: Optional[str] = None,
                     text: Optional[str] = None, lags: int = 100, samples: int = 32, seed: int = 0,
                     warmup: int = 50, lags_option: str = "--lags", longer: str = "a longer --corpus",
                     samples_option: Optional[str] = "--samples") -> GradientStudy:
    """Measure a trained model on windows of ``text``, else of ``corpus``, else of the corpus the
    checkpoint was trained on when it is still there, else of random tokens (said in ``inputs``).
    ``lags_option``, ``longer`` and ``samples_option`` (None: the command has none) are the words
    of the calling command (see text_windows)."""
    gen = np.random.default_rng(seed)
    length = warmup + lags + 2
    c = model.config
    _check_trace_fits(c.cell, c.layers, c.hidden_size, samples, length, lags_option, samples_option,
                      c.embedding_size)
    inputs = "random tokens (the checkpoint's corpus is gone; pass --corpus)"
    spec = corpus or ckpt.corpus_path
    if text is not None:
        inputs = "text given"
    elif spec is not None:
        try:
            text = read_text(spec)
            inputs = f"text: {spec}"
        except CharLMError:
            if corpus is not None:
                raise
    if text is not None:
        ids = text_windows(tokenizer.encode(text), samples, length, gen, lags_option, longer)
    else:
        ids = torch.from_numpy(gen.integers(0, tokenizer.vocab_size, size=(samples, length)))
    device = next(model.parameters()).device
    dtype = torch.float32 if device.type == "mps" else torch.float64     # MPS has no float64
    study = GradientStudy(lags=lags, samples=samples, seed=seed, warmup=warmup, inputs=inputs,
                          dtype=str(dtype).replace("torch.", ""))
    k = ckpt.trained("seq_len")
    with torch_threads(1):
        study.models.append(inspect_model(model, model.config.cell, ids, warmup, source=source,
                                          chunk_length=k, dtype=dtype))
    return study


def _check_trace_fits(cell: str, layers: int, hidden_size: int, samples: int, length: int,
                      lags_option: str = "--lags", samples_option: Optional[str] = "--samples",
                      embedding_size: int = 0) -> None:
    """Refuse, before any window is made, a trace the machine cannot hold (``--samples 10**10``
    was a MemoryError traceback; 100,000 windows of 1,000 lags grew past 12 GB)."""
    knobs = f"{samples_option} or {lags_option}" if samples_option else lags_option
    check_fits(trace_bytes(cell, layers, hidden_size, samples, length, embedding_size),
               f"tracing the gradients of {samples:,} windows of {length:,} steps ({cell}, "
               f"{layers}x{hidden_size})", f"lower {knobs}")


def study(lm, text: Optional[str] = None, corpus: Optional[str] = None, lags: int = 100,
          samples: int = 32, seed: int = 0, warmup: int = 50) -> GradientStudy:
    """How far back the gradient of a last-position loss reaches in a loaded model
    (``charlm.load(run)``), as `charlm inspect-gradients RUN` measures it.

    Windows come from ``text``, else the ``corpus`` file, else the corpus the model was trained
    on. ``.models[0].curves`` per layer and state, ``.to_json()`` with every number.
    """
    return study_of_trained(lm.model, lm.tokenizer, lm.checkpoint, str(lm.path), corpus=corpus,
                            text=text, lags=lags, samples=samples, seed=seed, warmup=warmup)


def inspect_gradients(checkpoint: Optional[str] = None, corpus: Optional[str] = None,
                      models: Sequence[str] = ("rnn", "lstm", "gru"), hidden_size: int = 384,
                      layers: int = 1, embedding_size: int = 64, lags: int = 100, samples: int = 32,
                      seed: int = 0, warmup: int = 50, vocab_size: int = 64) -> GradientStudy:
    """The measurement behind `charlm inspect-gradients`.

    With a checkpoint: its model on windows of ``corpus`` (or the corpus it was trained on, when
    that file is still there; else random tokens). Without: fresh models of each kind in
    ``models`` with the same sizes and seed, on the same windows (``corpus`` text, or random ids).
    """
    with torch_threads(1):
        return _inspect_gradients(checkpoint, corpus, models, hidden_size, layers, embedding_size,
                                  lags, samples, seed, warmup, vocab_size)


def _inspect_gradients(checkpoint, corpus, models, hidden_size, layers, embedding_size, lags,
                       samples, seed, warmup, vocab_size) -> GradientStudy:
    if lags < 1:
        raise ConfigError(f"--lags must be at least 1, got {lags}")
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    if warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {warmup}")
    gen = np.random.default_rng(seed)
    length = warmup + lags + 2

    if checkpoint is not None:
        model, tokenizer, ckpt = load_model(checkpoint, "cpu")
        return study_of_trained(model, tokenizer, ckpt, str(checkpoint), corpus=corpus, lags=lags,
                                samples=samples, seed=seed, warmup=warmup)

    kinds = [m.strip() for m in models if m.strip()]
    for m in kinds:
        if m not in CELLS:
            raise ConfigError(f"--models: unknown cell {m!r} (choose from {', '.join(CELLS)})")
    if not kinds:
        raise ConfigError("--models names no model (e.g. --models rnn,lstm,gru)")
    for kind in kinds:      # one model is traced at a time
        _check_trace_fits(kind, layers, hidden_size, samples, length, embedding_size=embedding_size)
    if corpus is not None:
        text = read_text(corpus)
        tokenizer = CharTokenizer.from_counts(Counter(text), 1, "none")
        vocab_size = tokenizer.vocab_size
        ids = text_windows(tokenizer.encode(text), samples, length, gen)
        inputs = f"text: {corpus}"
    else:
        ids = torch.from_numpy(gen.integers(0, vocab_size, size=(samples, length)))
        inputs = f"random tokens (vocabulary {vocab_size})"
    study = GradientStudy(lags=lags, samples=samples, seed=seed, warmup=warmup, inputs=inputs)
    for kind in kinds:
        torch.manual_seed(seed)   # same seed for every kind: the cells differ, nothing else
        cfg = ModelConfig(cell=kind, vocab_size=vocab_size, embedding_size=embedding_size,
                          hidden_size=hidden_size, layers=layers).validate()
        check_model_fits(cfg, vocab_size, "cpu", training=False)   # before a weight is allocated
        model = build_model(cfg).eval()
        window = model.chunk_length(0) if kind == "transformer" else None   # where its gradient stops
        study.models.append(inspect_model(model, kind, ids, warmup, chunk_length=window))
    return study




# ----------------------------------------------------------------------------------------------
# The short summary `charlm train --grad-report-every N` logs

def horizon_summary(model, x: torch.Tensor, y: torch.Tensor, state: Optional[tuple] = None,
                    windows: int = 4) -> dict[str, Any]:
    """Gradient horizon per layer on the current training chunk (cheap: a few streams, float32).

    x, y (B, k): the chunk and its targets; state: the carried state at the chunk start (tensors
    (layers, B, H)). The loss is at the chunk's last position, so lags reach k - 1 at most: a
    horizon of None ("beyond k-1") means the gradient is still above 1e-3 of its lag-0 value at
    the chunk start. Returns {"h[0]": horizon or None, ..., "lags": k - 1, "decay_h[0]": factor}.
    """
    b = min(windows, x.size(0))
    ids = torch.cat([x[:b], y[:b, -1:]], dim=1)                           # (b, k + 1)
    if state is not None:
        state = tuple(s[:, :b].detach() for s in state)
    was = model.training
    model.eval()
    try:
        curves, _ = measure_model(model, ids, warmup=0, state=state, dtype=torch.float32)
    finally:
        model.train(was)
    out: dict[str, Any] = {"lags": x.size(1) - 1}
    for c in curves:
        out[c.label] = c.horizon
    for c in curves:
        out[f"decay_{c.label}"] = round(c.decay_per_step, 4) if math.isfinite(c.decay_per_step) else None
    return out


def _plot_limits(study: GradientStudy) -> tuple[float, float]:
    """The y range that holds every curve and band, and the horizon line: from the data, with no
    floor, so a fresh RNN's gradient that falls to 1e-60 stays in the frame."""
    values = [HORIZON_RATIO, 1.0]
    for m in study.models:
        for c in m.curves:
            ref = c.gmean[0] or 1.0
            values += [v for v in c.relative if v > 0]
            values += [v / ref for v in (*c.p10, *c.p90) if v > 0]
    finite = [v for v in values if math.isfinite(v)]
    return min(finite) / 2, max(finite) * 2


def plot_study(study: GradientStudy, path: str | Path) -> None:
    """Draw log-norm (relative to lag 0) against lag, with the p10-p90 band; PNG or SVG."""
    path = check_plot_path(path, "charlm inspect-gradients --plot")
    ax = new_figure("charlm inspect-gradients --plot", figsize=(7.5, 4.5)).subplots()
    fig = ax.figure
    ks = set()
    for m in study.models:
        for c in m.curves:
            ref = c.gmean[0] or 1.0
            label = m.name if len(m.curves) == 1 else f"{m.name} {c.label}"
            line, = ax.semilogy(c.lags, [max(v, 1e-300) for v in c.relative], label=label,
                                linestyle="-" if c.state == "h" else "--")
            ax.fill_between(c.lags, [max(v / ref, 1e-300) for v in c.p10],
                            [max(v / ref, 1e-300) for v in c.p90], color=line.get_color(), alpha=0.12)
        if m.chunk_length:
            ks.add(m.chunk_length)
    for k in ks:
        ax.axvline(k, color="grey", linestyle=":", label=f"training chunk k={k}")
    ax.axhline(HORIZON_RATIO, color="red", linewidth=0.8, linestyle=":", label="horizon threshold 1e-3")
    ax.set_ylim(*_plot_limits(study))
    ax.set_xlabel("lag (steps back from the loss)")
    ax.set_ylabel("||dL/dh|| relative to lag 0")
    inputs = study.inputs
    if inputs.startswith("text: "):
        inputs = "text: " + Path(inputs[6:]).name
    models = ", ".join(m.name for m in study.models)
    ax.set_title(f"Gradient through time: {models}\non {inputs}; {study.samples} windows, geometric mean, "
                 f"band p10-p90", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    save_figure(fig, path)
