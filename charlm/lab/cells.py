"""What the cells hold (`charlm inspect-cells`): gate saturation, long-range cells, and where the
recurrent model beats an n-gram.

After Karpathy, Johnson & Fei-Fei, "Visualizing and Understanding Recurrent Networks" (2015), on
a trained recurrent run and a text (by default the start of its validation split):

- **Gates.** torch's fused nn.LSTM/nn.GRU never expose their gates, so the text is read again one
  step at a time from the module's own weights, with the equations of torch's documentation
  (``trace``; a test checks its h against the fused module's). For every gate unit, the fraction
  of characters at which it is left-saturated (< 0.1) and right-saturated (> 0.9).
- **Long-range cells.** Features computed from the text alone (``text_features``): position in
  the line, inside a string, bracket depth per kind, indentation, and user regexes. For each, the
  cells most correlated with it (Pearson r over the text) and a ridge probe on the whole state of
  every layer, fit on the first half of the text and scored on the second (R^2, or accuracy for
  a 0/1 feature, beside the majority guess).
- **The control.** Everything is measured again on an untrained model of the same shape (same
  config, fresh initialisation from a fixed seed): what the input alone explains.
- **Where the model wins.** A Kneser-Ney n-gram (charlm.lab.ngram) trained on the run's training
  split; per character, the bits the run's model saves over the best order, by character class
  and, for closing brackets and quotes, by the distance to the opening partner.

The "cell" of a unit is what the layer carries: c for an LSTM (the memory the paper coloured), h
for the others. The core never prints; errors are CharLMError with one line.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..config import RECURRENT
from ..corpus.tokenizers import normalize_text
from ..errors import ConfigError, CorpusError
from ..model import CharRNN
from ..plotting import check_plot_path, new_figure, save_figure
from ..threads import torch_threads
from ..util import csv_text, json_safe
from .context import evaluation_text
from .ngram import MAX_TOKENS, bits_per_char, check_tokens, measure, training_text

SCHEMA = "charlm.inspect-cells/1"
GATES = {"rnn": (), "lstm": ("input", "forget", "output"), "gru": ("reset", "update"),
         "mingru": ("update",), "minlstm": ("forget", "input")}
LEFT, RIGHT = 0.1, 0.9           # the paper's saturation thresholds
MAX_CHARS = 200_000              # the most characters a study reads (the step loop is ~50 us each)
MAX_HTML_CHARS = 20_000          # the most characters a page shows
MAX_FEATURES = 16                # user --feature patterns
MAX_TOP = 32
# Characters x units held at once: each model's states (float32) and the probe's standardised copy
# (float64), for the run and its control, about 24 bytes each: 30 M is about 0.7 GB.
MAX_CHAR_UNITS = 30_000_000
DEFAULT_CHARS = 20_000
BRACKETS = {"paren": "()", "square": "[]", "brace": "{}"}
CLASSES = ("letter", "digit", "space", "newline", "open bracket", "close bracket", "quote", "punctuation",
           "other")
CONTROL_SEED = 1234


# ----------------------------------------------------------------------------------------------
# Reading a text, keeping every state and how saturated each gate was

@dataclass
class Trace:
    """One text read from zero state. cells[l] (T, H): layer l's c (LSTM) or h after each token;
    gates[l]: gate name -> {"left": (H,), "right": (H,)}, the fraction of tokens at which each unit
    is below 0.1 and above 0.9 (counted as the gates are computed: the (T, H) gates themselves are
    not kept); nats (T - 1,): the loss of token t + 1 given tokens 0..t; top_ids, top_p (T, K):
    the model's K best guesses after each token."""

    cells: list[np.ndarray]
    gates: list[dict[str, dict[str, np.ndarray]]]
    nats: np.ndarray
    top_ids: np.ndarray
    top_p: np.ndarray
    gate_error: float = 0.0      # the largest |h from the recomputed gates - the fused h|


def check_recurrent(model) -> None:
    cell = getattr(getattr(model, "config", None), "cell", None)
    if cell not in RECURRENT:
        also = " (`charlm inspect-attention` reads a transformer's heads)" if cell == "transformer" else ""
        raise ConfigError(f"inspect-cells reads recurrent cells ({', '.join(RECURRENT)}); this model is "
                          f"a {cell}, which has none{also}")


def _one_layer(rnn, l: int):
    """Layer l of a fused nn.RNN/LSTM/GRU as a module of its own (the same weights, copied)."""
    kwargs = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, torch.nn.RNN) else {}
    w = getattr(rnn, f"weight_ih_l{l}")
    one = type(rnn)(w.size(1), rnn.hidden_size, num_layers=1, bias=rnn.bias, batch_first=True, **kwargs)
    one.load_state_dict({k.replace(f"_l{l}", "_l0"): v for k, v in rnn.state_dict().items() if k.endswith(f"_l{l}")})
    return one.to(w.device).eval()


def _fused_layer(rnn, cell: str, l: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict, float]:
    """Layer l of an nn.RNN/LSTM/GRU on x (T, I): (h (T, H), cell state (T, H), gates name -> (T, H),
    the largest |h recomputed - h fused|).

    The fused kernel returns every h but no gate. The gates at step t depend only on x_t and
    h_(t-1), so given the fused h sequence they are computed for every step at once, with the
    equations of torch's documentation and the module's weights (gate order i, f, g, o for the
    LSTM; r, z, n for the GRU). The LSTM's c_t = f_t c_(t-1) + i_t g_t is then run step by step,
    and h is recomputed from the gates and compared with the fused one: the check that these are
    the gates the module really used.
    """
    h, _ = _one_layer(rnn, l)(x.unsqueeze(0))                          # (1, T, H)
    h = h[0]
    T, H = h.shape
    if cell == "rnn":
        return h, h, {}, 0.0
    w_ih, w_hh = getattr(rnn, f"weight_ih_l{l}"), getattr(rnn, f"weight_hh_l{l}")
    b_ih = getattr(rnn, f"bias_ih_l{l}") if rnn.bias else 0
    b_hh = getattr(rnn, f"bias_hh_l{l}") if rnn.bias else 0
    prev = torch.cat([h.new_zeros(1, H), h[:-1]])                      # (T, H): h_(t-1), zero at t = 0
    xi = x @ w_ih.T + b_ih                                             # (T, G*H)
    hh = prev @ w_hh.T + b_hh                                          # (T, G*H)
    if cell == "lstm":
        pre = xi + hh
        i, f, o = torch.sigmoid(pre[:, :H]), torch.sigmoid(pre[:, H:2 * H]), torch.sigmoid(pre[:, 3 * H:])
        write = i * torch.tanh(pre[:, 2 * H:3 * H])                    # (T, H): i_t * g_t
        c = torch.empty_like(h)
        c_t = h.new_zeros(H)
        for t in range(T):                                             # the one recurrence left
            c_t = torch.addcmul(write[t], f[t], c_t)
            c[t] = c_t
        again = o * torch.tanh(c)
        gates = {"input": i, "forget": f, "output": o}
    else:
        r = torch.sigmoid(xi[:, :H] + hh[:, :H])
        z = torch.sigmoid(xi[:, H:2 * H] + hh[:, H:2 * H])
        n = torch.tanh(xi[:, 2 * H:] + r * hh[:, 2 * H:])
        again = (1 - z) * n + z * prev
        c = h
        gates = {"reset": r, "update": z}
    return h, c, gates, float((again - h).abs().max()) if T else 0.0


@torch.inference_mode()
def trace(model, ids: np.ndarray, top: int = 5) -> Trace:
    """Read ids (T,) from zero state, keeping every layer's state and gates (see Trace)."""
    check_recurrent(model)
    was = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        cell = model.config.cell
        x = model.embed(torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)).float()   # (T, E)
        cells, gates = [], []
        gate_error = 0.0
        if cell in ("mingru", "minlstm"):
            # The min cells' gates read only the input, so each layer is one parallel pass.
            rnn, y = model.rnn, x.unsqueeze(0)                          # (1, T, E)
            for l, mc in enumerate(rnn.cells):
                inp = rnn._layer_input(l, y)
                pre = mc._gates(inp)                                    # (1, T, H) each
                h = mc(inp)                                             # (1, T, H)
                y = h if l == 0 else y + h
                cells.append(h[0])
                gates.append(_saturation({n: torch.sigmoid(p[0]) for n, p in zip(GATES[cell], pre)}))
            top_h = y[0]                                                # the residual stream the head reads
        else:
            inp = x
            for l in range(model.rnn.num_layers):
                h, c, g, err = _fused_layer(model.rnn, cell, l, inp)
                gate_error = max(gate_error, err)
                cells.append(c)
                gates.append(_saturation(g))
                inp = h
            top_h = inp
        # The head in slices: (T, V) logits may be large for a sentencepiece vocabulary.
        T = top_h.size(0)
        target = torch.as_tensor(np.asarray(ids[1:], dtype=np.int64), device=device)
        nats = torch.empty(max(0, T - 1), dtype=torch.float64)
        k = min(top, model.config.vocab_size)
        top_ids, top_p = torch.empty(T, k, dtype=torch.int64), torch.empty(T, k)
        for a in range(0, T, 4096):
            logp = torch.log_softmax(model.head(top_h[a:a + 4096]).float(), -1)   # (S, V)
            p, i = logp.exp().topk(k, -1)
            top_ids[a:a + 4096], top_p[a:a + 4096] = i.cpu(), p.cpu()
            b = min(a + 4096, T - 1)
            if b > a:
                nats[a:b] = -logp[: b - a].gather(1, target[a:b, None])[:, 0].double().cpu()
    finally:
        model.train(was)
    np_ = lambda t: t.detach().float().cpu().numpy()
    return Trace(cells=[np_(c) for c in cells], gates=gates, nats=nats.numpy(),
                 top_ids=top_ids.numpy(), top_p=top_p.numpy(), gate_error=gate_error)


def untrained_like(model, seed: int = CONTROL_SEED):
    """A fresh model of the same shape (same config), initialised from ``seed`` without touching
    the global RNG: the control that shows what the input alone explains."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = CharRNN(model.config)
    return fresh.to(next(model.parameters()).device).eval()


# ----------------------------------------------------------------------------------------------
# Gate saturation

def _saturation(gates: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """gate name -> (T, H) values  ->  gate name -> left and right fractions over T, each (H,)."""
    return {n: {"left": (g < LEFT).float().mean(0).cpu().numpy(), "right": (g > RIGHT).float().mean(0).cpu().numpy()}
            for n, g in gates.items()}


def gate_fractions(tr: Trace) -> list[dict[str, dict[str, np.ndarray]]]:
    """Per layer, per gate: (left, right) fractions of characters, each (H,)."""
    return tr.gates


def _gate_rows(trained: list, control: list) -> list[dict[str, Any]]:
    rows = []
    for l, (layer, ctrl) in enumerate(zip(trained, control)):
        for name, f in layer.items():
            c = ctrl[name]
            rows.append({"layer": l, "gate": name,
                         "left": float(f["left"].mean()), "right": float(f["right"].mean()),
                         "mostly_left": int((f["left"] > 0.5).sum()), "mostly_right": int((f["right"] > 0.5).sum()),
                         "never_saturated": int(((f["left"] + f["right"]) < 0.1).sum()),
                         "units": int(len(f["left"])),
                         "control_left": float(c["left"].mean()), "control_right": float(c["right"].mean()),
                         "control_mostly_left": int((c["left"] > 0.5).sum()),
                         "control_mostly_right": int((c["right"] > 0.5).sum()),
                         "control_never_saturated": int(((c["left"] + c["right"]) < 0.1).sum())})
    return rows


# ----------------------------------------------------------------------------------------------
# Features of the text

def string_spans(text: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """in_string (T,) 0/1 and the (open, close) positions of each closed string, Python's rules
    roughly: ' and " strings end at their quote or at a newline, triple-quoted ones span lines,
    a backslash escapes the next character. The quotes themselves count as inside."""
    n = len(text)
    inside = np.zeros(n, dtype=np.float32)
    pairs = []
    i, quote, start = 0, "", -1
    while i < n:
        ch = text[i]
        if not quote:
            if ch in "'\"":
                quote = ch * 3 if text.startswith(ch * 3, i) else ch
                start = i
                inside[i:i + len(quote)] = 1
                i += len(quote)
                continue
        else:
            inside[i] = 1
            if ch == "\\":
                if i + 1 < n:
                    inside[i + 1] = 1
                i += 2
                continue
            if text.startswith(quote, i):
                inside[i:i + len(quote)] = 1
                pairs.append((start, i + len(quote) - 1))
                i += len(quote)
                quote = ""
                continue
            if ch == "\n" and len(quote) == 1:
                quote = ""                                           # an unclosed one-line string
        i += 1
    return inside, pairs


def bracket_depths(text: str) -> tuple[dict[str, np.ndarray], list[tuple[int, int, str]]]:
    """Depth after each character per bracket kind (never below 0), and the (open, close, kind)
    pairs matched by a stack per kind. Brackets inside strings (string_spans) do not count."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4") if text else np.zeros(0, np.uint32)
    code = string_spans(text)[0] == 0                                 # (T,) outside any string
    depths, pairs = {}, []
    for kind, (o, c) in BRACKETS.items():
        step = ((codes == ord(o)).astype(np.int64) - (codes == ord(c)).astype(np.int64)) * code
        # A running sum clamped at 0: depth_t = max(0, depth_(t-1) + step_t), without a loop:
        # s - min(0, min of s so far), with s the plain running sum.
        s = np.cumsum(step)
        depths[kind] = (s - np.minimum(0, np.minimum.accumulate(s))).astype(np.float32) if len(s) else s.astype(np.float32)
        stack = []
        for i in np.flatnonzero(step):
            if step[i] > 0:
                stack.append(int(i))
            elif stack:
                pairs.append((stack.pop(), int(i), kind))
    return depths, pairs


def text_features(text: str, patterns: Sequence[tuple[str, str]] = ()) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (kind, values (T,)): kind 'value' (R^2 probe) or 'flag' (0/1, accuracy probe).
    The value at t describes the text up to and including character t."""
    n = len(text)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4") if text else np.zeros(0, np.uint32)
    newline = codes == 10
    idx = np.arange(n)
    last_nl = np.maximum.accumulate(np.where(newline, idx, -1)) if n else idx
    line_pos = (idx - last_nl).astype(np.float32)                   # 0 at a newline, 1 after it
    # Indentation: leading spaces of the current line counted so far (a tab counts 4 here), so
    # it is known from what has been read: it grows through the indent and then holds.
    width = np.where(codes == 32, 1, np.where(codes == 9, 4, 0))
    line_start = np.where(last_nl < 0, 0, last_nl + 1)
    text_char = (width == 0) & ~newline                              # the first of these ends a line's indent
    first_text = np.full(n, n, dtype=np.int64)
    if n:
        # For each position, the first non-space character at or after its line's start.
        nxt = np.where(text_char, idx, n)
        nxt = np.minimum.accumulate(nxt[::-1])[::-1]                 # next non-space at or after t
        first_text = nxt[np.minimum(line_start, n - 1)]
    cw = np.concatenate([[0], np.cumsum(width)])
    upto = np.minimum(idx + 1, first_text)                           # the indent ends at first_text
    indent = np.where(newline, 0, cw[np.maximum(upto, line_start)] - cw[line_start]).astype(np.float32)
    inside, _ = string_spans(text)
    depths, _ = bracket_depths(text)
    feats = {"line position": ("value", line_pos), "in string": ("flag", inside),
             "indent": ("value", indent)}
    for kind, d in depths.items():
        feats[f"depth {kind}"] = ("value", d)
    for name, pattern in patterns:
        flag = np.zeros(n, dtype=np.float32)
        for m in re.finditer(pattern, text):
            flag[m.start():m.end()] = 1
        feats[name] = ("flag", flag)
    return feats


def parse_features(specs: Sequence[str]) -> list[tuple[str, str]]:
    """--feature NAME=REGEX, checked: a name, a pattern that compiles, at most MAX_FEATURES."""
    if len(specs) > MAX_FEATURES:
        raise ConfigError(f"at most {MAX_FEATURES} --feature options, got {len(specs)}")
    out = []
    for spec in specs:
        name, eq, pattern = str(spec).partition("=")
        name = name.strip()
        if not eq or not name or not pattern:
            raise ConfigError(f"--feature takes NAME=REGEX, got {spec!r}")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"--feature {name}: {pattern!r} is not a regular expression: {e}") from None
        if name in [n for n, _ in out]:
            raise ConfigError(f"--feature {name} is given twice")
        out.append((name, pattern))
    return out


# ----------------------------------------------------------------------------------------------
# Correlation and probes

def correlations(states: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every unit (columns of states (T, U)) with y (T,); 0 for a constant unit."""
    a = states - states.mean(0)
    b = y - y.mean()
    den = np.sqrt((a * a).sum(0) * (b * b).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b[:, None]).sum(0) / den
    return np.where(den > 0, r, 0.0)


ALPHAS = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)     # ridge strengths tried, per sample


class Probe:
    """Linear probes on one state matrix (T, U): fit on the first half of the text, scored on the
    second. Units are standardised on the fit half; the ridge strength is chosen per feature
    from ALPHAS on the fit half's last quarter (fit on its first three quarters), then the probe
    is refit on the whole fit half. One eigendecomposition of each Gram matrix serves every
    feature and every strength."""

    def __init__(self, states: np.ndarray):
        T = len(states)
        self.cut, self.inner = T // 2, (T // 2) * 3 // 4
        x = states.astype(np.float64)
        mu, sd = x[:self.cut].mean(0), x[:self.cut].std(0)
        self.z = (x - mu) / np.where(sd > 1e-8, sd, 1.0)                  # (T, U)
        self.eig = {n: np.linalg.eigh(self.z[:n].T @ self.z[:n]) for n in (self.inner, self.cut)}

    def _fit(self, n: int, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
        s, v = self.eig[n]
        ym = y[:n].mean()
        w = v @ ((v.T @ (self.z[:n].T @ (y[:n] - ym))) / (s + alpha * n))
        return w, ym

    def score(self, y: np.ndarray, kind: str) -> dict[str, Any]:
        """R^2 for a value; accuracy (threshold 0.5) beside the majority guess for a flag."""
        y = y.astype(np.float64)
        errs = []
        for a in ALPHAS:
            w, ym = self._fit(self.inner, y, a)
            errs.append(float(((self.z[self.inner:self.cut] @ w + ym - y[self.inner:self.cut]) ** 2).mean()))
        alpha = ALPHAS[int(np.argmin(errs))]
        w, ym = self._fit(self.cut, y, alpha)
        pred, ys = self.z[self.cut:] @ w + ym, y[self.cut:]
        if kind == "flag":
            majority = float(y[:self.cut].mean() >= 0.5)
            return {"measure": "accuracy", "score": float(((pred >= 0.5) == (ys >= 0.5)).mean()),
                    "chance": float((ys == majority).mean()), "alpha": alpha}
        ss = float(((ys - ys.mean()) ** 2).sum())
        r2 = 1 - float(((ys - pred) ** 2).sum()) / ss if ss > 0 else math.nan
        return {"measure": "R2", "score": r2, "chance": 0.0, "alpha": alpha}


def unit_names(tr: Trace) -> list[str]:
    return [f"L{l}:{u}" for l, c in enumerate(tr.cells) for u in range(c.shape[1])]


def feature_rows(feats: dict, tr: Trace, control: Trace, top: int) -> list[dict[str, Any]]:
    states, cstates = np.concatenate(tr.cells, 1), np.concatenate(control.cells, 1)    # (T, U)
    names = unit_names(tr)
    probe, cprobe = Probe(states), Probe(cstates)
    rows = []
    for name, (kind, y) in feats.items():
        half = len(y) // 2
        if np.ptp(y) == 0 or np.ptp(y[:half]) == 0 or np.ptp(y[half:]) == 0:
            rows.append({"feature": name, "kind": kind, "constant": True, "mean": float(y.mean()) if len(y) else 0.0})
            continue
        r, cr = correlations(states, y), correlations(cstates, y)
        best = np.argsort(-np.abs(r))[:top]
        rows.append({"feature": name, "kind": kind, "constant": False, "mean": float(y.mean()),
                     "cells": [{"cell": names[i], "index": int(i), "r": float(r[i])} for i in best],
                     "control_best": {"cell": names[int(np.argmax(np.abs(cr)))], "r": float(cr[np.argmax(np.abs(cr))])},
                     "probe": probe.score(y, kind), "control_probe": cprobe.score(y, kind)})
    return rows


# ----------------------------------------------------------------------------------------------
# Bits saved over the n-gram

def char_class(ch: str) -> str:
    if ch == "\n":
        return "newline"
    if ch.isspace():
        return "space"
    if ch.isalpha():
        return "letter"
    if ch.isdigit():
        return "digit"
    if ch in "([{":
        return "open bracket"
    if ch in ")]}":
        return "close bracket"
    if ch in "'\"`":
        return "quote"
    if ch.isprintable() and not ch.isalnum():
        return "punctuation"
    return "other"


def distance_bins(longest: int) -> list[tuple[int, int]]:
    """[1, 2), [2, 4), [4, 8) ... covering ``longest``."""
    out, a = [], 1
    while a <= max(1, longest):
        out.append((a, 2 * a))
        a *= 2
    return out


def saved_rows(text: str, saved: np.ndarray, rnn_bits: np.ndarray, ng_bits: np.ndarray) -> tuple[list, list]:
    """By character class, and for closing brackets and quotes by distance to their partner.
    saved[t - 1] is for character t (the first character is never predicted)."""
    classes = np.array([char_class(ch) for ch in text[1:]])
    by_class = []
    for c in CLASSES:
        m = classes == c
        if m.any():
            by_class.append({"class": c, "chars": int(m.sum()), "saved": float(saved[m].mean()),
                             "model_bits": float(rnn_bits[m].mean()), "ngram_bits": float(ng_bits[m].mean()),
                             "total_saved": float(saved[m].sum())})
    _, spairs = string_spans(text)
    _, bpairs = bracket_depths(text)
    closers = [(o, c, "bracket") for o, c, _ in bpairs] + [(o, c, "quote") for o, c in spairs]
    by_distance = []
    closers = [(o, c, k) for o, c, k in closers if c >= 1]
    longest = max([c - o for o, c, _ in closers], default=1)
    for kind in ("bracket", "quote"):
        d = np.array([c - o for o, c, k in closers if k == kind], dtype=np.int64)
        at = np.array([c - 1 for o, c, k in closers if k == kind], dtype=np.int64)
        for lo, hi in distance_bins(longest):
            m = (d >= lo) & (d < hi)
            if m.any():
                by_distance.append({"kind": kind, "from": lo, "to": hi - 1, "count": int(m.sum()),
                                    "saved": float(saved[at[m]].mean()), "model_bits": float(rnn_bits[at[m]].mean()),
                                    "ngram_bits": float(ng_bits[at[m]].mean())})
    return by_class, by_distance


# ----------------------------------------------------------------------------------------------
# The study

@dataclass
class CellsStudy:
    inputs: str
    chars: int
    cut: bool
    model: dict[str, Any]
    gates: list[dict[str, Any]]
    features: list[dict[str, Any]]
    model_bits_per_char: float
    control_bits_per_char: float
    ngram: Optional[dict[str, Any]] = None
    by_class: list[dict[str, Any]] = field(default_factory=list)
    by_distance: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    # Kept for the page and the plot, not written to JSON.
    text: str = ""
    trace: Optional[Trace] = None
    fractions: list = field(default_factory=list)
    control_fractions: list = field(default_factory=list)
    saved: Optional[np.ndarray] = None
    ngram_nats: Optional[np.ndarray] = None
    itos: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return json_safe({"schema": SCHEMA, "inputs": self.inputs, "chars": self.chars, "cut": self.cut,
                          "model": self.model, "gates": self.gates, "features": self.features,
                          "bits_per_char": {"model": self.model_bits_per_char, "control": self.control_bits_per_char},
                          "ngram": self.ngram, "saved_by_class": self.by_class,
                          "saved_by_distance": self.by_distance, "seconds": self.seconds,
                          "gate_units": [{n: {"left": f["left"].tolist(), "right": f["right"].tolist()}
                                          for n, f in layer.items()} for layer in self.fractions]})

    def csv_rows(self) -> list[list[Any]]:
        """A long table: section, item, measure, trained, untrained control."""
        rows = [["section", "item", "measure", "trained", "control"]]
        for g in self.gates:
            item = f"layer {g['layer']} {g['gate']}"
            rows += [["gate", item, "left_saturated", g["left"], g["control_left"]],
                     ["gate", item, "right_saturated", g["right"], g["control_right"]]]
        for f in self.features:
            if f["constant"]:
                rows.append(["feature", f["feature"], "constant", f["mean"], ""])
                continue
            rows.append(["feature", f["feature"], f"best cell {f['cells'][0]['cell']} r", f["cells"][0]["r"],
                         f["control_best"]["r"]])
            rows.append(["feature", f["feature"], f"probe {f['probe']['measure']}", f["probe"]["score"],
                         f["control_probe"]["score"]])
        for c in self.by_class:
            rows.append(["saved_by_class", c["class"], "bits_saved_per_char", c["saved"], ""])
        for d in self.by_distance:
            rows.append(["saved_by_distance", f"{d['kind']} {d['from']}-{d['to']}", "bits_saved_per_char",
                         d["saved"], ""])
        return rows

    def csv_text(self) -> str:
        return csv_text(self.csv_rows())

    def best_cell(self, feature: str) -> Optional[int]:
        for f in self.features:
            if f["feature"] == feature and not f["constant"]:
                return f["cells"][0]["index"]
        return None


def _whole(option: str, value: Any, least: int, most: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and least <= value <= most):
        raise ConfigError(f"{option} must be a whole number from {least} to {most:,}, got {value!r}")


def check_options(chars: Any = None, top: Any = 3, order: Any = 0, html_chars: Any = 1000) -> None:
    if chars is not None:
        _whole("--chars", chars, 16, MAX_CHARS)
    _whole("--top", top, 1, MAX_TOP)
    _whole("--order", order, 0, 20)
    _whole("--html-chars", html_chars, 1, MAX_HTML_CHARS)


def _bpc(nats: np.ndarray, chars: int) -> float:
    return bits_per_char(nats, len(nats) + 1, chars)


def inspect_cells(model, tokenizer, text: str, inputs: str = "text given", features: Sequence[str] = (),
                  chars: Optional[int] = None, top: int = 3, order: int = 10, train_ids: Optional[np.ndarray] = None,
                  train_inputs: str = "", source: str = "", threads: Optional[int] = None) -> CellsStudy:
    """The study on the first ``chars`` characters of ``text`` (default DEFAULT_CHARS, or as many
    as MAX_CHAR_UNITS allows for a big model); ``order`` 0 (or no train_ids) skips the n-gram."""
    check_recurrent(model)
    check_options(chars=chars, top=top, order=order)
    patterns = parse_features(features)
    if getattr(tokenizer, "kind", "char") != "char":
        raise ConfigError("inspect-cells reads one token per character; this run's tokenizer is "
                          f"{tokenizer.kind}")
    text = normalize_text(text, getattr(tokenizer, "normalize", "none"))
    units = model.config.layers * model.config.hidden_size
    if chars is None:                                                  # DEFAULT_CHARS, fewer for a big model
        chars = max(16, min(DEFAULT_CHARS, MAX_CHAR_UNITS // units))
    if chars * units > MAX_CHAR_UNITS:
        raise ConfigError(f"--chars {chars:,} is too many for {units:,} units: the states of the run and "
                          f"its control would not fit the memory this command allows; use --chars "
                          f"{MAX_CHAR_UNITS // units:,} or fewer")
    cut = len(text) > chars
    text = text[:chars]
    if len(text) < 16:
        raise CorpusError(f"the text has {len(text)} characters: at least 16 are needed")
    ids = tokenizer.encode(text)
    seconds = {}
    # One stream of one text: a second thread has nothing to do but wait (and on a busy machine
    # two threads ran this 10-20x slower than one), so "auto" is one thread here.
    with torch_threads(threads or 1):
        t0 = time.perf_counter()
        tr = trace(model, ids)
        control = trace(untrained_like(model), ids)
        seconds["trace"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    fr, cfr = gate_fractions(tr), gate_fractions(control)
    feats = text_features(text, patterns)
    rows = feature_rows(feats, tr, control, top)
    seconds["features"] = round(time.perf_counter() - t0, 2)
    c = model.config
    study = CellsStudy(inputs=inputs, chars=len(text), cut=cut,
                       model={"source": source, "cell": c.cell, "layers": c.layers, "hidden_size": c.hidden_size,
                              "vocab_size": c.vocab_size, "control_seed": CONTROL_SEED,
                              "state": "c" if c.cell == "lstm" else "h",
                              "gate_check": max(tr.gate_error, control.gate_error)},
                       gates=_gate_rows(fr, cfr), features=rows,
                       model_bits_per_char=_bpc(tr.nats, len(text)),
                       control_bits_per_char=_bpc(control.nats, len(text)), seconds=seconds, text=text,
                       trace=tr, fractions=fr, control_fractions=cfr,
                       itos=[tokenizer.decode([i]) for i in range(c.vocab_size)])
    if order and train_ids is not None:
        t0 = time.perf_counter()
        ng, _, lp = measure(train_ids, ids, len(text), c.vocab_size, order, train_inputs, inputs)
        best = ng.best_order
        study.ngram_nats = -lp[best - 1]
        study.saved = (study.ngram_nats - tr.nats) / math.log(2)                 # bits, (T - 1,)
        study.ngram = {"order": order, "best_order": best, "train": train_inputs, "train_tokens": len(train_ids),
                       "bits_per_char": ng.orders[best - 1]["bits_per_char"],
                       "orders": [{"order": o["order"], "bits_per_char": o["bits_per_char"]} for o in ng.orders],
                       "table_bytes": ng.table_bytes}
        study.by_class, study.by_distance = saved_rows(text, study.saved, tr.nats / math.log(2),
                                                       study.ngram_nats / math.log(2))
        seconds["ngram"] = round(time.perf_counter() - t0, 2)
    return study


def study(lm, file: Optional[str | Path] = None, text: Optional[str] = None, features: Sequence[str] = (),
          chars: Optional[int] = None, top: int = 3, order: int = 10, train: Optional[str | Path] = None,
          max_train_tokens: Optional[int] = None, threads: Optional[int] = None) -> CellsStudy:
    """What the cells of a loaded model (``charlm.load(run)``) hold, as `charlm inspect-cells`
    measures it: on ``text``, else ``file``, else the run's validation split (its first ``chars``
    characters). The n-gram (``order`` 0 skips it) trains on the run's training split or ``train``."""
    check_recurrent(lm.model)
    check_options(chars=chars, top=top, order=order)
    parse_features(features)
    max_train_tokens = MAX_TOKENS if max_train_tokens is None else max_train_tokens
    check_tokens(max_train_tokens)
    if text is None:
        text, inputs = evaluation_text(lm.checkpoint, None if file is None else str(file))
    else:
        inputs = "text given"
    train_ids, train_inputs = None, ""
    if order:
        train_text, train_inputs = training_text(lm.checkpoint, None if train is None else str(train),
                                                 max_train_tokens)
        train_ids = lm.tokenizer.encode(train_text)
    return inspect_cells(lm.model, lm.tokenizer, text, inputs, features, chars, top, order, train_ids,
                         train_inputs, str(lm.path), threads)


# ----------------------------------------------------------------------------------------------
# The plot: gate scatter, bits saved by distance, by class

def plot_cells(study: CellsStudy, path: str | Path) -> Path:
    path = check_plot_path(path, "charlm inspect-cells --plot")
    layers = len(study.fractions)
    fig = new_figure("charlm inspect-cells --plot", figsize=(4 * max(1, layers) + 8, 4.2))
    axes = fig.subplots(1, max(1, layers) + 2)
    colours = {"input": "tab:blue", "forget": "tab:green", "output": "tab:red", "reset": "tab:purple",
               "update": "tab:orange"}
    for l in range(max(1, layers)):
        ax = axes[l]
        if not study.fractions or not study.fractions[l]:
            ax.text(0.5, 0.5, f"a {study.model['cell']} has no gates", ha="center", va="center")
        else:
            for name, f in study.fractions[l].items():
                c = study.control_fractions[l][name]
                ax.scatter(c["left"], c["right"], s=6, color=colours[name], alpha=0.25, marker="x")
                ax.scatter(f["left"], f["right"], s=8, color=colours[name], alpha=0.7, label=f"{name} gate")
            ax.plot([0, 1], [1, 0], color="grey", linewidth=0.8)
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("fraction left-saturated (< 0.1)")
        ax.set_ylabel("fraction right-saturated (> 0.9)")
        ax.set_title(f"layer {l} gates (dots trained, x untrained)", fontsize=9)
    dist, cls = axes[-2], axes[-1]
    if study.by_distance:
        for kind, marker in (("bracket", "o"), ("quote", "s")):
            pts = [d for d in study.by_distance if d["kind"] == kind]
            if pts:
                dist.plot([d["from"] for d in pts], [d["saved"] for d in pts], marker=marker,
                          label=f"closing {kind}")
        dist.axhline(0, color="black", linewidth=0.8)
        if study.ngram:
            dist.axvline(study.ngram["best_order"] - 1, color="grey", linestyle=":",
                         label=f"n-gram sees {study.ngram['best_order'] - 1} back")
        dist.set_xscale("log", base=2)
        dist.legend(fontsize=7)
    dist.set_xlabel("distance to the opening partner (chars, bin start)")
    dist.set_ylabel(f"bits saved over {study.ngram['best_order']}-gram" if study.ngram else "bits saved")
    dist.set_title("closing brackets and quotes", fontsize=9)
    if study.by_class:
        cls.barh([c["class"] for c in study.by_class], [c["saved"] for c in study.by_class], color="tab:blue")
        cls.axvline(0, color="black", linewidth=0.8)
    cls.set_xlabel("mean bits saved per character")
    cls.set_title("by character class", fontsize=9)
    inputs = re.sub(r"\S*/(\S+)", r"\1", study.inputs)
    fig.suptitle(f"{study.model['cell']} {study.model['layers']}x{study.model['hidden_size']} on {inputs}: "
                 f"{study.chars:,} chars", fontsize=10)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# The page

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; }
#text { font-family: monospace; white-space: pre-wrap; word-break: break-all; line-height: 1.5;
        border: 1px solid #ccc; padding: 0.6em; }
#text span { cursor: default; }
#tip { position: fixed; background: #fffff0; border: 1px solid #888; padding: 0.4em; font: 12px monospace;
       white-space: pre; pointer-events: none; display: none; }
.note { color: #666; font-size: 0.9em; }
</style></head><body>
<h3 id="title"></h3>
<p class="note" id="note"></p>
<label>colour by <select id="mode"></select></label>
<p class="note" id="legend"></p>
<div id="text"></div>
<div id="tip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
document.getElementById("title").textContent = D.title;
document.getElementById("note").textContent = D.note;
const sel = document.getElementById("mode");
D.modes.forEach((m, i) => { const o = document.createElement("option"); o.value = i; o.textContent = m.label; sel.appendChild(o); });
const box = document.getElementById("text");
const spans = [];
for (let i = 0; i < D.text.length; i++) {
  const s = document.createElement("span");
  const ch = D.text[i];
  // Control characters other than newline and tab are shown as their control picture (U+2400 + code).
  const code = ch.charCodeAt(0);
  s.textContent = (code < 32 && ch !== "\\n" && ch !== "\\t") ? String.fromCharCode(0x2400 + code) : ch;
  s.dataset.i = i;
  box.appendChild(s);
  spans.push(s);
}
function colour(v, signed) {
  if (v === null || Number.isNaN(v)) return "transparent";
  const a = Math.min(1, Math.abs(v));
  if (!signed) return "rgba(220,40,40," + (a * 0.85).toFixed(3) + ")";
  return v >= 0 ? "rgba(40,90,220," + (a * 0.85).toFixed(3) + ")" : "rgba(220,40,40," + (a * 0.85).toFixed(3) + ")";
}
function paint() {
  const m = D.modes[sel.value];
  for (let i = 0; i < spans.length; i++) {
    const v = m.values[i];
    spans[i].style.backgroundColor = colour(v === null ? null : v / m.scale, m.signed);
  }
  document.getElementById("legend").textContent = m.legend;
}
// A link may choose the colouring: cells.html#mode=2 opens with the third one.
const asked = /mode=(\\d+)/.exec(location.hash);
if (asked && Number(asked[1]) < D.modes.length) sel.value = asked[1];
sel.addEventListener("change", paint);
const tip = document.getElementById("tip");
box.addEventListener("mousemove", (e) => {
  const i = e.target.dataset ? e.target.dataset.i : undefined;
  if (i === undefined) { tip.style.display = "none"; return; }
  const lines = ["char " + JSON.stringify(D.text[i]) + " at " + i];
  D.modes.forEach((m) => { const v = m.values[i]; lines.push(m.label + ": " + (v === null ? "-" : v.toFixed(3))); });
  lines.push("model's guesses for the next char:");
  D.top[i].forEach((g) => lines.push("  " + JSON.stringify(g[0]) + " " + (100 * g[1]).toFixed(1) + "%"));
  tip.textContent = lines.join("\\n");
  tip.style.left = (e.clientX + 12) + "px";
  tip.style.top = (e.clientY + 12) + "px";
  tip.style.display = "block";
});
box.addEventListener("mouseleave", () => { tip.style.display = "none"; });
paint();
</script></body></html>
"""


def _json_for_script(value: Any) -> str:
    """JSON that is safe inside a <script> element: ASCII only (no character of the text, not even
    one UTF-8 cannot encode, reaches the file as itself), and '<', '>' and '&' as \\u escapes, so
    no text can close the element or open a comment."""
    text = json.dumps(json_safe(value), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_modes(study: CellsStudy, cells: Sequence[int] = ()) -> list[dict[str, Any]]:
    """The colourings: each chosen cell (the best cell of every feature, and ``cells`` by index),
    the surprise, and the bits saved over the n-gram."""
    tr = study.trace
    states = np.concatenate(tr.cells, 1)                              # (T, U)
    names = unit_names(tr)
    chosen: list[tuple[int, str]] = []
    for f in study.features:
        if not f["constant"]:
            chosen.append((f["cells"][0]["index"], f"best cell for {f['feature']} (r {f['cells'][0]['r']:+.2f})"))
    for i in cells:
        chosen.append((i, "cell chosen"))
    modes = []
    for i, why in chosen:
        v = states[:, i]
        scale = float(np.max(np.abs(v))) or 1.0
        modes.append({"label": f"cell {names[i]}: {why}", "values": v, "scale": scale, "signed": True,
                      "legend": f"cell {names[i]}: blue positive, red negative, full colour at |value| {scale:.3g}"})
    surprise = np.concatenate([[np.nan], tr.nats / math.log(2)])
    modes.append({"label": "surprise (bits)", "values": surprise, "scale": 8.0, "signed": False,
                  "legend": "surprise: -log2 p(char) under the model; full red at 8 bits"})
    if study.saved is not None:
        saved = np.concatenate([[np.nan], study.saved])
        modes.append({"label": f"bits saved over the {study.ngram['best_order']}-gram", "values": saved,
                      "scale": 4.0, "signed": True,
                      "legend": "blue: the model beat the n-gram, red: the n-gram did better; full colour at 4 bits"})
    return modes


def check_cells(study: CellsStudy, cells: Sequence[int]) -> list[int]:
    units = sum(c.shape[1] for c in study.trace.cells)
    out = []
    for i in cells:
        if not (isinstance(i, int) and not isinstance(i, bool) and 0 <= i < units):
            raise ConfigError(f"--cell must be a unit index from 0 to {units - 1}, got {i!r}")
        out.append(i)
    if len(out) > MAX_FEATURES:
        raise ConfigError(f"at most {MAX_FEATURES} --cell options, got {len(out)}")
    return out


def page_html(study: CellsStudy, cells: Sequence[int] = (), html_chars: int = 5000) -> str:
    """The self-contained page: no network, no external script or font; the corpus text travels
    as JSON data and is put on the page with textContent, never parsed as markup."""
    _whole("--html-chars", html_chars, 1, MAX_HTML_CHARS)
    cells = check_cells(study, cells)
    n = min(html_chars, study.chars)
    text = study.text[:n]
    modes = page_modes(study, cells)
    for m in modes:
        m["values"] = [None if not math.isfinite(float(v)) else round(float(v), 4) for v in m["values"][:n]]
    top = [[[study.itos[int(i)], round(float(p), 4)] for i, p in zip(ids, ps)]
           for ids, ps in zip(study.trace.top_ids[:n], study.trace.top_p[:n])]
    shown = f"the first {n:,} of {study.chars:,} characters studied" if n < study.chars else f"{n:,} characters"
    if study.cut:
        shown += " (the input was cut to the study's --chars)"
    note = (f"{study.model['cell']} {study.model['layers']}x{study.model['hidden_size']}, "
            f"{study.inputs}: {shown}. Model {study.model_bits_per_char:.3f} bits/char"
            + (f", best n-gram (order {study.ngram['best_order']}) {study.ngram['bits_per_char']:.3f}"
               if study.ngram else "") + ".")
    data = {"title": f"What the cells hold: {Path(study.model.get('source') or 'model').name}", "note": note,
            "text": text, "modes": modes, "top": top}
    title = html.escape(data["title"])
    return PAGE.replace("__TITLE__", title).replace("__DATA__", _json_for_script(data))


def write_html(study: CellsStudy, path: str | Path, cells: Sequence[int] = (), html_chars: int = 5000) -> Path:
    page = page_html(study, cells, html_chars)
    path = Path(path)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write --html {path}: {e.strerror or e}") from None
    return path
