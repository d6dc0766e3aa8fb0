"""How much of the past does a trained model use? (`charlm inspect-context`)

The behavioural counterpart of the gradient measurement (charlm.lab.gradients), after Khandelwal, He,
Qi & Jurafsky, "Sharp Nearby, Fuzzy Far Away: How Neural Language Models Use Context" (ACL 2018).
For a fixed, evenly spread sample of target positions t in a text, every target is scored

- with the full history: the state carried through at least ``lead`` tokens before t (from the
  start of the text for the first stream), as `charlm evaluate` reads a text;
- with only the last n tokens (the context curve): the state starts from zero at t - n;
- with the last d tokens intact and everything further back *replaced* by a passage from elsewhere
  in the text (the state after reading that passage from zero, then the d real tokens);
- with the last d tokens intact and the tokens further back *shuffled* (within octaves
  [t - 2d, t - d), up to ``shuffle_max`` back, zero state beyond).

From the curves: the effective context (the smallest n whose loss is within a tolerance of the
full-history loss) and the perturbation horizons (the same for replace and shuffle, over d).

Cost. Nothing is run twice that can be shared. A run from zero state at position s scores every
target t > s at context t - s, so (target, n) pairs are grouped by their start s = t - n; the
targets lie on a lattice with a power-of-two spacing g, so for every n >= g (a multiple of g) the
pairs of all targets share M + max/g runs instead of M each. The replace curve uses the same runs
from the donor's state instead of zero. The shuffle curve reads each target's shuffled history
once (a trunk) and branches off it at each t - d. Runs are batched, shortest rows dropping out of
the batch as they end, so the work is the sum of the run lengths; ``ContextStudy.cost`` says it.

The core never prints and imports nothing of the CLI; errors are CharLMError with one line.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint
from ..config import check_seed
from ..corpus.text import Corpus
from ..errors import ConfigError, CorpusError
from ..plotting import check_plot_path, new_figure, save_figure
from ..threads import torch_threads
from ..util import csv_text, finite_or_none, is_finite_number, json_safe
from .gradients import study_of_trained

SCHEMA = "charlm.inspect-context/1"
DONORS = 4          # distinct donor passages for the replace curve (each row uses the farthest)
SEGMENT = 256       # time steps per fused call: bounds the (rows, steps, H) output kept at once


def context_grid(max_context: int) -> list[int]:
    """1, 2, 4, ... up to max_context (and max_context itself): a log scale of context lengths."""
    out, n = [], 1
    while n < max_context:
        out.append(n)
        n *= 2
    return out + [max_context]


def lattice_targets(n_tokens: int, count: int, first: int, widest: Optional[int] = None) -> tuple[np.ndarray, int]:
    """``count`` target positions in [first, n_tokens - 1], evenly spaced by a power of two g.

    A power-of-two spacing makes t - n coincide across targets for every power-of-two n >= g, so
    one run serves many (target, n) pairs. g is the largest that fits (the lattice then covers
    half the usable range or more, centred), and at most ``widest``: a wider spacing spreads the
    targets further but shares fewer contexts.
    """
    usable = n_tokens - 1 - first                     # positions first .. n_tokens - 1
    if count < 1:
        raise ConfigError(f"--targets must be at least 1, got {count}")
    if usable < count - 1:
        raise CorpusError(f"the text has {n_tokens} tokens: too few for {count} targets with "
                          f"{first} tokens of history each; lower --max-context or --targets, or "
                          f"give a longer text (the text_file argument)")
    g = 1 << int(math.floor(math.log2(usable / (count - 1)))) if count > 1 else 1
    if widest is not None:
        g = max(1, min(g, 1 << int(math.floor(math.log2(max(1, widest))))))
    p0 = first + (usable - g * (count - 1)) // 2
    return p0 + g * np.arange(count, dtype=np.int64), g


# ----------------------------------------------------------------------------------------------
# The one primitive: many rows of tokens through the model as a batch, scored at chosen offsets

@dataclass
class Rows:
    """A batch of runs. tokens (R, L) int64 (padded); lengths (R,): tokens each row reads;
    init: a state (tuple of (layers, R, H)) or None for zero; scores at (row, offset) predict
    target (the token after the offset-th one read); snaps: (row, offset) whose state after
    ``offset`` tokens is wanted back."""

    tokens: np.ndarray
    lengths: np.ndarray
    score_row: np.ndarray
    score_off: np.ndarray
    score_tgt: np.ndarray
    init: Optional[tuple] = None
    snap_row: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    snap_off: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _rnn_state(model, state: tuple):
    return state if model.config.cell == "lstm" else state[0]


# The rows below hold a state as a tuple of tensors whose first two dimensions are (layers, rows):
# a recurrent model's own state; for a transformer, its generation cache stacked over layers, so
# that it reads the text as it generates, each token seeing at most window + memory - 1 before it.

def zero_state(model, rows: int, device) -> tuple:
    """The state from which a row reads with nothing before it."""
    if model.config.cell == "transformer":
        cache = model.step_state(rows, device)
        return tuple(torch.stack([layer[j] for layer in cache]) for j in range(len(cache[0])))
    return model.init_state(rows, device)


def advance(model, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
    """Read x (A, T) from state: the features the head reads (A, T, H), and the new state."""
    if model.config.cell == "transformer":
        cache = [tuple(s[layer] for s in state) for layer in range(state[0].size(0))]
        out, cache = model.read_features(x, cache)
        return out, tuple(torch.stack([layer[j] for layer in cache]) for j in range(len(cache[0])))
    out, new = model.rnn(model.embed(x), _rnn_state(model, state))      # out (A, T, H)
    return out, (new if isinstance(new, tuple) else (new,))


@torch.inference_mode()
def run_rows(model, rows: Rows) -> tuple[np.ndarray, np.ndarray, tuple, int]:
    """Per-score loss (nats) and correctness (argmax == target), snapshot states, token-steps run.

    Rows are sorted longest first, so the rows still running at any step are a prefix of the
    batch: time is cut into segments at every row length (and every SEGMENT steps), and each
    segment runs the fused module on that prefix only. The work is sum(lengths) token-steps.
    The head is applied only where a score is wanted (the vocabulary can be large).
    """
    device = next(model.parameters()).device
    R = len(rows.lengths)
    order = np.argsort(-rows.lengths, kind="stable")
    rank = np.empty(R, dtype=np.int64)
    rank[order] = np.arange(R)
    lengths = rows.lengths[order]
    tokens = torch.from_numpy(np.ascontiguousarray(rows.tokens[order])).to(device)
    state = zero_state(model, R, device) if rows.init is None else tuple(
        s[:, torch.from_numpy(order).to(s.device)].to(device) for s in rows.init)
    s_row, s_off = rank[rows.score_row], rows.score_off
    n_row, n_off = rank[rows.snap_row], rows.snap_off
    loss = np.full(len(s_row), np.nan)
    correct = np.zeros(len(s_row), dtype=bool)
    snaps = tuple(torch.zeros(s.size(0), len(n_row), *s.shape[2:], device=device) for s in state)
    longest = int(lengths.max()) if R else 0
    bounds = sorted({0, longest, *lengths.tolist(), *range(0, longest, SEGMENT), *n_off.tolist()})
    neg = -lengths                                                     # ascending, for searchsorted
    for a, b in zip(bounds[:-1], bounds[1:]):
        active = int(np.searchsorted(neg, -b, side="right"))          # rows with length >= b
        if active == 0:
            break
        x = tokens[:active, a:b]                                       # (A, T)
        head = tuple(s[:, :active] for s in state)
        out, new = advance(model, x, head)                             # out (A, T, H)
        state = tuple(torch.cat([n, s[:, active:]], dim=1) for n, s in zip(new, state))
        here = np.nonzero((s_off >= a) & (s_off < b))[0]
        if len(here):
            h = out[torch.from_numpy(s_row[here]).to(device), torch.from_numpy(s_off[here] - a).to(device)]
            logits = model.head(h).float()                             # (S, V)
            target = torch.from_numpy(rows.score_tgt[here]).to(device)
            loss[here] = F.cross_entropy(logits, target, reduction="none").double().cpu().numpy()
            correct[here] = (logits.argmax(-1) == target).cpu().numpy()
        done = np.nonzero(n_off == b)[0]
        for j, s in enumerate(state):
            snaps[j][:, torch.from_numpy(done).to(device)] = s[:, torch.from_numpy(n_row[done]).to(device)]
    return loss, correct, snaps, int(lengths.sum())


def _windows(ids: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """ids[s : s + length] for each start, padded with id 0 past the end -> (len(starts), length)."""
    pos = starts[:, None] + np.arange(length)[None, :]
    return np.where(pos < len(ids), ids[np.minimum(pos, len(ids) - 1)], 0)


def pair_rows(ids: np.ndarray, targets: np.ndarray, grid: Sequence[int]) -> tuple[Rows, np.ndarray]:
    """Rows for scoring every target t at every context n of grid, from a state set at t - n.

    Pairs with the same start s = t - n share one row (of the longest n among them). Returns the
    rows and each row's start position (R,); scores are ordered (target, n) row-major.
    """
    grid = np.asarray(grid, dtype=np.int64)
    starts = (targets[:, None] - grid[None, :]).ravel()                # (M*G,)
    uniq, inv = np.unique(starts, return_inverse=True)
    ns = np.broadcast_to(grid, (len(targets), len(grid))).ravel()
    lengths = np.zeros(len(uniq), dtype=np.int64)
    np.maximum.at(lengths, inv, ns)
    rows = Rows(tokens=_windows(ids, uniq, int(lengths.max())), lengths=lengths, score_row=inv,
                score_off=ns - 1, score_tgt=np.repeat(ids[targets], len(grid)))
    return rows, uniq


def _stacked(rows: Rows, inits: Sequence[tuple]) -> Rows:
    """The same rows once per initial state, as one batch (copy c's rows are c*R .. (c+1)*R - 1)."""
    R, C = len(rows.lengths), len(inits)
    return Rows(tokens=np.tile(rows.tokens, (C, 1)), lengths=np.tile(rows.lengths, C),
                score_row=np.concatenate([rows.score_row + c * R for c in range(C)]),
                score_off=np.tile(rows.score_off, C), score_tgt=np.tile(rows.score_tgt, C),
                init=tuple(torch.cat(parts, dim=1) for parts in zip(*inits)))


# ----------------------------------------------------------------------------------------------
# The four readings of each target: full history, last n only, the past replaced, the past shuffled

def full_history(model, ids: np.ndarray, targets: np.ndarray, lead: int,
                 streams: int = 8) -> tuple[np.ndarray, np.ndarray, int]:
    """Loss and correctness of every target with the state carried through the text before it.

    The targets (sorted) are cut into ``streams`` groups read side by side; a group's stream
    starts ``lead`` tokens before its first target (or at the text's start) and reads on through
    its last, so every target has at least ``lead`` tokens of carried history, like evaluate's
    lead-in (which agrees with one stream reading the whole text to ~1e-4 nats).
    """
    groups = [g for g in np.array_split(np.arange(len(targets)), min(streams, len(targets))) if len(g)]
    starts = np.array([max(0, int(targets[g[0]]) - lead) for g in groups], dtype=np.int64)
    lengths = np.array([int(targets[g[-1]]) - s for g, s in zip(groups, starts)], dtype=np.int64)
    row = np.concatenate([np.full(len(g), i) for i, g in enumerate(groups)])
    rows = Rows(tokens=_windows(ids, starts, int(lengths.max())), lengths=lengths, score_row=row,
                score_off=targets - starts[row] - 1, score_tgt=ids[targets])
    loss, correct, _, steps = run_rows(model, rows)
    return loss, correct, steps


def donor_states(model, ids: np.ndarray, length: int, count: int = DONORS) -> tuple[tuple, np.ndarray, int]:
    """The state after reading each of ``count`` passages of ``length`` tokens from zero state,
    spread evenly over the text; returns (states (layers, count, H) each, passage centres, steps)."""
    n = len(ids)
    count = max(1, min(count, n // max(1, length)))
    ends = length + (n - length) * (2 * np.arange(count) + 1) // (2 * count)
    starts = (ends - length).astype(np.int64)
    rows = Rows(tokens=_windows(ids, starts, length), lengths=np.full(count, length, dtype=np.int64),
                score_row=np.zeros(0, dtype=np.int64), score_off=np.zeros(0, dtype=np.int64),
                score_tgt=np.zeros(0, dtype=np.int64), snap_row=np.arange(count),
                snap_off=np.full(count, length, dtype=np.int64))
    _, _, snaps, steps = run_rows(model, rows)
    return snaps, starts + length // 2, steps


def shuffled_history(model, ids: np.ndarray, targets: np.ndarray, dists: Sequence[int], far: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Loss (M, D) and correctness with the last d tokens intact and the ``far`` - d before them
    shuffled, for each d in dists (ascending, all < far); zero state ``far`` tokens back.

    The shuffle is within octaves: the tokens of [t - d_(i+1), t - d_i) are permuted among
    themselves, so "everything beyond d" is shuffled for every d of the grid at once and one
    trunk run per target (the whole shuffled window) serves every d: the state at t - d is
    snapshot from the trunk, and a branch reads the d real tokens from there.
    """
    M, D = len(targets), len(dists)
    edges = [*dists, far]                                              # block i: [far - e[i+1], far - e[i])
    trunk = _windows(ids, targets - far, far)                          # (M, far): t - far .. t - 1
    for lo, hi in zip(edges[:-1], edges[1:]):
        block = trunk[:, far - hi: far - lo]                           # (M, hi - lo)
        trunk[:, far - hi: far - lo] = np.take_along_axis(block, rng.random(block.shape).argsort(1), 1)
    snap_row = np.repeat(np.arange(M), D)
    snap_off = np.tile(far - np.asarray(dists, dtype=np.int64), M)
    none = np.zeros(0, dtype=np.int64)
    _, _, snaps, steps = run_rows(model, Rows(tokens=trunk, lengths=np.full(M, far, dtype=np.int64),
                                              score_row=none, score_off=none, score_tgt=none,
                                              snap_row=snap_row, snap_off=snap_off))
    # Branches, one per (target, d), in the snapshots' order: read ids[t - d : t], score ids[t].
    d_all = np.tile(np.asarray(dists, dtype=np.int64), M)
    t_all = np.repeat(targets, D)
    branch = Rows(tokens=_windows(ids, t_all - d_all, int(max(dists))), lengths=d_all,
                  score_row=np.arange(M * D), score_off=d_all - 1, score_tgt=ids[t_all], init=snaps)
    loss, correct, _, more = run_rows(model, branch)
    return loss.reshape(M, D), correct.reshape(M, D), steps + more


def truncated_and_replaced(model, ids: np.ndarray, targets: np.ndarray, grid: Sequence[int],
                           replace: bool = True) -> tuple[dict[str, np.ndarray], int]:
    """Loss and correctness (M, G) of every target given only its last n tokens (zero state at
    t - n: "context"), and with everything before them replaced by a passage from elsewhere in
    the text (the donor's state at t - n: "replace"). One batch serves both."""
    rows, starts = pair_rows(ids, targets, grid)
    R, G, M = len(starts), len(grid), len(targets)
    zero = zero_state(model, R, next(model.parameters()).device)
    inits, steps = [zero], 0
    if replace:
        donors, centres, steps = donor_states(model, ids, int(max(grid)))
        # Each row takes the donor passage farthest from its own start, so it is never its history.
        pick = torch.from_numpy(np.abs(centres[None, :] - starts[:, None]).argmax(1)).to(zero[0].device)
        inits.append(tuple(s[:, pick] for s in donors))
    loss, correct, _, more = run_rows(model, _stacked(rows, inits))
    out = {}
    for c, name in enumerate(["context", "replace"][:len(inits)]):
        part = slice(c * M * G, (c + 1) * M * G)
        out[name] = loss[part].reshape(M, G)
        out[name + "_correct"] = correct[part].reshape(M, G)
    return out, steps + more


# ----------------------------------------------------------------------------------------------
# The study: curves, the figures read off them, and their JSON / CSV forms

def first_within(xs: Sequence[int], losses: Sequence[float], reference: float,
                 tolerance: float) -> Optional[int]:
    """The first x whose loss is at most reference * (1 + tolerance); None when there is none."""
    bound = reference + tolerance * abs(reference)
    for x, loss in zip(xs, losses):
        if math.isfinite(loss) and loss <= bound:
            return int(x)
    return None


def _points(key: str, xs: Sequence[int], loss: np.ndarray, correct: np.ndarray,
            full: np.ndarray) -> list[dict[str, Any]]:
    """Mean loss, accuracy and the paired difference to the full-history loss (with its standard
    error over targets) at each x; loss (M, X), full (M,)."""
    diff = loss - full[:, None]
    m = loss.shape[0]
    se = diff.std(0, ddof=1) / math.sqrt(m) if m > 1 else np.full(len(xs), np.nan)
    return [{key: int(x), "loss": float(loss[:, i].mean()), "accuracy": float(correct[:, i].mean()),
             "increase": float(diff[:, i].mean()), "stderr": float(se[i])} for i, x in enumerate(xs)]


@dataclass
class ContextStudy:
    """Everything `charlm inspect-context` measured; ``to_json()`` has every number."""

    inputs: str
    text_tokens: int
    targets: int
    spacing: Optional[int]           # the lattice spacing g (None: positions given)
    max_context: int
    tolerance: float
    lead: int
    shuffle_max: int
    seed: int
    full_loss: float
    full_accuracy: float
    curve: list[dict[str, Any]]
    effective_context: Optional[int]
    replace: list[dict[str, Any]]
    replace_horizon: Optional[int]
    shuffle: list[dict[str, Any]]
    shuffle_horizon: Optional[int]
    model: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)

    @property
    def chunk_length(self) -> Optional[int]:
        return self.model.get("chunk_length")

    @property
    def gradient_horizon(self) -> Optional[int]:
        return self.model.get("gradient_horizon")

    def to_json(self) -> dict[str, Any]:
        return json_safe({
            "schema": SCHEMA,
            "settings": {"inputs": self.inputs, "text_tokens": self.text_tokens, "targets": self.targets,
                         "spacing": self.spacing, "max_context": self.max_context,
                         "contexts": [p["context"] for p in self.curve], "tolerance": self.tolerance,
                         "lead": self.lead, "shuffle_max": self.shuffle_max, "seed": self.seed},
            "model": self.model,
            "full_context": {"loss": self.full_loss, "accuracy": self.full_accuracy},
            "effective_context": self.effective_context,
            "curve": self.curve,
            "perturbation": {"replace": self.replace, "replace_horizon": self.replace_horizon,
                             "shuffle": self.shuffle, "shuffle_horizon": self.shuffle_horizon},
            "cost": self.cost,
        })

    def csv_rows(self) -> list[list[Any]]:
        """One row per (kind, distance): kind is context, replace or shuffle; the summary figures
        repeated on each row, so a spreadsheet needs no second table."""
        rows = [["kind", "distance", "loss", "accuracy", "increase", "stderr", "full_loss",
                 "effective_context", "replace_horizon", "shuffle_horizon", "chunk_length",
                 "gradient_horizon"]]
        blank = lambda v: "" if v is None else v
        tail = [self.full_loss, blank(self.effective_context), blank(self.replace_horizon),
                blank(self.shuffle_horizon), blank(self.chunk_length), blank(self.gradient_horizon)]
        for kind, points, key in (("context", self.curve, "context"), ("replace", self.replace, "distance"),
                                  ("shuffle", self.shuffle, "distance")):
            for p in points:
                rows.append([kind, p[key], p["loss"], p["accuracy"], p["increase"],
                             blank(finite_or_none(p["stderr"])), *tail])
        return rows

    def csv_text(self) -> str:
        return csv_text(self.csv_rows())


def _whole(option: str, value: Any, least: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
        raise ConfigError(f"{option} must be a whole number >= {least}, got {value!r}")


def check_options(targets: Any = 1, max_context: Any = 1, tolerance: Any = 0.0, shuffle_max: Any = 0,
                  seed: Any = 0, grad_lags: Any = 0, grad_samples: Any = 1) -> None:
    """The study's settings, checked before any text is read: a value of the wrong type (from
    the Python API) or a seed numpy or torch would reject is one line, not a traceback later."""
    _whole("--targets", targets, 1)
    _whole("--max-context", max_context, 1)
    _whole("--shuffle-max", shuffle_max, 0)
    _whole("--grad-lags", grad_lags, 0)
    _whole("--grad-samples", grad_samples, 1)
    if not (is_finite_number(tolerance) and tolerance >= 0):
        raise ConfigError(f"--tolerance must be a number >= 0, got {tolerance!r}")
    check_seed(seed)


def measure_context(model, ids: np.ndarray, positions: Optional[Sequence[int]] = None,
                    targets: int = 96, max_context: int = 2048, tolerance: float = 0.01,
                    shuffle_max: int = 256, lead: Optional[int] = None, seed: int = 0,
                    inputs: str = "ids given") -> ContextStudy:
    """The curves of one model on token ids (N,); the core of `charlm inspect-context`.

    ``positions``: the target positions to score (each needs max_context tokens before it); by
    default ``targets`` positions on an evenly spread power-of-two lattice. ``shuffle_max`` 0
    skips the shuffle curve (it is capped at max_context). ``lead``: tokens of carried history for the full-history reading
    (default 2 * max_context).
    """
    check_options(targets=targets, max_context=max_context, tolerance=tolerance, shuffle_max=shuffle_max,
                  seed=seed)
    shuffle_max = min(shuffle_max, max_context)       # the shuffled window lies within the longest
    lead = 2 * max_context if lead is None else lead
    ids = np.asarray(ids, dtype=np.int64)
    grid = context_grid(max_context)
    if positions is None:
        # Spacing at most max_context / 4: the three longest contexts share their runs.
        pos, spacing = lattice_targets(len(ids), targets, max_context, widest=max(1, max_context // 4))
    else:
        pos, spacing = np.asarray(sorted(positions), dtype=np.int64), None
        if len(pos) == 0 or pos[0] < max_context or pos[-1] >= len(ids):
            raise ConfigError(f"target positions must lie in [{max_context}, {len(ids) - 1}]")
    was = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        full, full_ok, s_full = full_history(model, ids, pos, lead)
        curves, s_pairs = truncated_and_replaced(model, ids, pos, grid)
        dists = [d for d in grid if d < shuffle_max]
        if dists:
            sh, sh_ok, s_shuf = shuffled_history(model, ids, pos, dists, shuffle_max,
                                                 np.random.default_rng(seed))
            # d = shuffle_max: nothing is left to shuffle; that reading is the context curve's.
            at = grid.index(shuffle_max) if shuffle_max in grid else None
            if at is not None:
                sh = np.concatenate([sh, curves["context"][:, at:at + 1]], 1)
                sh_ok = np.concatenate([sh_ok, curves["context_correct"][:, at:at + 1]], 1)
                dists = dists + [shuffle_max]
        else:
            s_shuf = 0
    finally:
        model.train(was)
    seconds = time.perf_counter() - t0
    ref = float(full.mean())
    curve = _points("context", grid, curves["context"], curves["context_correct"], full)
    replace = _points("distance", grid, curves["replace"], curves["replace_correct"], full)
    shuffle = _points("distance", dists, sh, sh_ok, full) if dists else []
    m = len(pos)
    steps = s_full + s_pairs + s_shuf
    return ContextStudy(
        inputs=inputs, text_tokens=len(ids), targets=m, spacing=spacing, max_context=max_context,
        tolerance=tolerance, lead=lead, shuffle_max=shuffle_max, seed=seed, full_loss=ref,
        full_accuracy=float(full_ok.mean()), curve=curve,
        effective_context=first_within(grid, [p["loss"] for p in curve], ref, tolerance),
        replace=replace, replace_horizon=first_within(grid, [p["loss"] for p in replace], ref, tolerance),
        shuffle=shuffle,
        shuffle_horizon=first_within(dists, [p["loss"] for p in shuffle], ref, tolerance) if dists else None,
        cost={"token_steps": steps, "token_steps_per_target": round(steps / m, 1),
              "full_history": s_full, "context_and_replace": s_pairs, "shuffle": s_shuf,
              "naive_token_steps_per_target": int(2 * sum(grid) + shuffle_max * len(dists) + lead),
              "seconds": round(seconds, 2)})


# ----------------------------------------------------------------------------------------------
# A checkpoint's model on its validation text (or a file), with its k and gradient horizon

def evaluation_text(ckpt: Checkpoint, file: Optional[str] = None,
                    tail: Optional[float] = None) -> tuple[str, str]:
    """(text, description): ``file`` (its last ``tail`` of characters when given), else the tail
    of the corpus the checkpoint was trained on (its validation split, as `evaluate --tail`)."""
    if tail is not None and not (math.isfinite(tail) and 0 < tail <= 1):
        raise ConfigError(f"--tail must be in (0, 1], got {tail}")
    if file is None:
        spec = ckpt.corpus_path
        if not spec:
            raise CorpusError("the checkpoint does not name its corpus; give a text FILE to read")
        if tail is None:
            tail = float(ckpt.trained("val_fraction", 0.1))
        try:
            corpus = Corpus.resolve(str(spec))
        except CorpusError:
            raise CorpusError(f"the checkpoint's corpus {spec} is gone; give a text FILE to read") from None
        return corpus.text(tail), f"{spec} (last {tail:g}: the validation split)"
    text = Corpus.resolve(str(file)).text(tail)
    return text, str(file) if tail is None else f"{file} (last {tail:g})"


def gradient_horizon(model, tokenizer, ckpt: Checkpoint, text: str, lags: int = 100,
                     samples: int = 32, seed: int = 0, warmup: int = 50) -> dict[str, Any]:
    """The gradient horizon of charlm.lab.gradients (the first lag whose ||dL/dh|| falls below 1e-3 of
    lag 0's), on windows of the same text. The headline is the longest over layers and states
    (None: beyond ``lags`` for at least one of them)."""
    study = study_of_trained(model, tokenizer, ckpt, "", text=text, lags=lags, samples=samples,
                             seed=seed, warmup=warmup, lags_option="--grad-lags",
                             longer="a longer text (the text_file argument)", samples_option=None)
    curves = study.models[0].curves
    horizons = {c.label: c.horizon for c in curves}
    values = list(horizons.values())
    return {"gradient_horizon": None if None in values else max(values), "gradient_lags": lags,
            "gradient_horizons": horizons}


def inspect_context(model, tokenizer, ckpt: Checkpoint, source: str, file: Optional[str] = None,
                    text: Optional[str] = None, tail: Optional[float] = None, targets: int = 96,
                    max_context: int = 2048, tolerance: float = 0.01, shuffle_max: int = 256,
                    seed: int = 0, grad_lags: int = 100, grad_samples: int = 32,
                    threads: Optional[int] = None) -> ContextStudy:
    """`charlm inspect-context`: the curves on ``text``, else ``file``, else the checkpoint's
    validation text, beside the training chunk length k and the gradient horizon
    (``grad_lags`` 0 skips the latter)."""
    check_options(targets, max_context, tolerance, shuffle_max, seed, grad_lags, grad_samples)
    if text is None:
        text, inputs = evaluation_text(ckpt, file, tail)
    else:
        inputs = "text given"
    ids = tokenizer.encode(text)
    with torch_threads(threads):
        study = measure_context(model, ids, targets=targets, max_context=max_context,
                                tolerance=tolerance, shuffle_max=shuffle_max, seed=seed, inputs=inputs)
        c = model.config
        study.model = {"source": source, "cell": c.cell, "layers": c.layers, "hidden_size": c.hidden_size,
                       "vocab_size": c.vocab_size,
                       "chunk_length": ckpt.trained("seq_len"),
                       "reach": model.reach}     # a transformer's window + memory; None: unbounded
        if grad_lags > 0:
            t0 = time.perf_counter()
            study.model.update(gradient_horizon(model, tokenizer, ckpt, text, grad_lags, grad_samples, seed))
            study.cost["gradient_seconds"] = round(time.perf_counter() - t0, 2)
        else:
            study.model.update({"gradient_horizon": None, "gradient_lags": 0, "gradient_horizons": {}})
    return study


def study(lm, file: Optional[str | Path] = None, text: Optional[str] = None,
          tail: Optional[float] = None, targets: int = 96, max_context: int = 2048,
          tolerance: float = 0.01, shuffle_max: int = 256, seed: int = 0,
          grad_lags: int = 100, grad_samples: int = 32, threads: Optional[int] = None) -> ContextStudy:
    """How much of the past a loaded model (``charlm.load(run)``) uses, as `charlm inspect-context`
    measures it.

    Targets come from ``text``, else ``file`` (its last ``tail`` when given), else the validation
    tail of the corpus the model was trained on. ``.curve`` (loss per context n),
    ``.effective_context``, ``.replace``/``.shuffle`` (the perturbation curves), ``.to_json()``.
    """
    return inspect_context(lm.model, lm.tokenizer, lm.checkpoint, str(lm.path),
                           file=None if file is None else str(file), text=text, tail=tail,
                           targets=targets, max_context=max_context, tolerance=tolerance,
                           shuffle_max=shuffle_max, seed=seed, grad_lags=grad_lags,
                           grad_samples=grad_samples, threads=threads)


def plot_context(study: ContextStudy, path: str | Path) -> Path:
    """Loss against context length (left) and loss increase against the intact distance d when
    the past is replaced or shuffled (right); png, svg or pdf by the suffix."""
    path = check_plot_path(path, "charlm inspect-context --plot")
    fig = new_figure("charlm inspect-context --plot", figsize=(11, 4.5))
    left, right = fig.subplots(1, 2)
    xs = [p["context"] for p in study.curve]
    left.plot(xs, [p["loss"] for p in study.curve], marker="o", label="last n tokens only (zero state before)")
    left.axhline(study.full_loss, color="black", linewidth=1, label=f"full history {study.full_loss:.4f}")
    left.axhspan(study.full_loss, study.full_loss * (1 + study.tolerance), color="grey", alpha=0.2,
                 label=f"tolerance {study.tolerance:.1%}")
    marks = [("effective context", study.effective_context, "green"),
             ("training chunk k", study.chunk_length, "grey"),
             ("gradient horizon", study.gradient_horizon, "red")]
    for ax in (left, right):
        for label, x, colour in marks:
            if x:
                ax.axvline(x, color=colour, linestyle=":", label=f"{label} {x}")
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
    left.set_xlabel("context n (tokens)")
    left.set_ylabel("loss (nats/token)")
    left.set_title("How much of the past is used", fontsize=10)
    for name, points in (("replaced", study.replace), ("shuffled", study.shuffle)):
        if points:
            right.plot([p["distance"] for p in points], [p["increase"] for p in points], marker="o",
                       label=f"past beyond d {name}")
    right.axhline(0, color="black", linewidth=1)
    right.axhline(study.tolerance * study.full_loss, color="grey", linestyle="--", label="tolerance")
    right.set_xlabel("d: nearest tokens kept intact")
    right.set_ylabel("loss increase over full history (nats)")
    right.set_title("Changing the distant past", fontsize=10)
    for ax in (left, right):
        ax.legend(fontsize=7)
    inputs = re.sub(r"\S*/(\S+)", r"\1", study.inputs)               # file names, not folders
    fig.suptitle(f"{inputs}: {study.targets} targets", fontsize=10)
    return save_figure(fig, path)
