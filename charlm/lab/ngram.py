"""A character n-gram baseline with interpolated Kneser-Ney smoothing (`charlm ngram`).

What a finite-horizon model gets from the last n - 1 tokens alone, to set beside a recurrent
model: the part of the recurrent model's advantage that the n-gram cannot have is long-range
(charlm.lab.cells measures where it comes from). Karpathy, Johnson & Fei-Fei (2015) compared
their LSTMs with n-gram models up to n = 20 in the same way.

The model (Chen & Goodman's interpolated Kneser-Ney, one discount per order). For order k with
history h (the last k - 1 tokens) and next token w,

    p_k(w | h) = ( max(c_k(hw) - D_k, 0) + B_k(h) * p_(k-1)(w | h') ) / c_k(h)

where h' drops h's oldest token, c_k(h) = sum over w of c_k(hw), and the back-off mass
B_k(h) = D_k * N1+(h .) (the number of distinct w seen after h). A history never seen
(c_k(h) = 0) passes p_(k-1) through unchanged. The counts c_k are raw counts at the model's
highest order and *continuation* counts below it (the number of distinct tokens seen just before
hw), the Kneser-Ney idea: a lower order is used only where the higher one knows little, so it
should predict "novel continuations", not frequent ones. Order 1 backs off to the uniform
distribution over the vocabulary, so every token has a probability and p sums to 1 for every
history (tests/lab/test_ngram.py checks it). D_k = n1 / (n1 + 2 n2) from the count-of-counts of
that order (Ney, Essen & Kneser 1994), clipped to [0.05, 0.95].

Counting, vectorised. Every k-gram is a 64-bit hash, built left to right: g_k(t) = mix(g_(k-1)(t-1),
ids[t]) for the k-gram ending at t, so the hash of a k-gram's history is g_(k-1)(t-1), and one
numpy pass per order gives every k-gram's key. np.unique counts them. The continuation count of a
k-gram is the number of distinct (k+1)-grams that end with it: the unique (k+1)-grams' suffixes,
counted once more with np.unique. Two different n-grams share a hash with probability about
(distinct n-grams)^2 / 2^65 per order: under 1e-3 for 10^8 of them.

Memory. Counting holds a few arrays of one 8-byte value per training token at once (three
arrays of keys, the ids, and a sort's permutation and copy, freed between orders), so the
training text is capped (``max_tokens``, default 8 M: about 0.5-1 GB at the peak, measured by
benchmarks/ngram_speed.py; a 100 MB corpus trains on the last 8 M characters of its training
split, nearest the validation text, and says so; the corpus is read block by block, so the rest
of it is never held). What is kept are sorted tables, and
above order ``prune_above`` the n-grams seen once are dropped from them: their discounted mass
c - D is added to their history's back-off mass B(h), so the distribution still sums to 1 (a
pruned w gets B(h) p_(k-1)(w) / c(h), as if unseen), and a history all of whose n-grams were
pruned is dropped too (it would pass p_(k-1) through anyway). On text, most high-order n-grams
are singletons, so the tables stay a small multiple of the lower orders'.

Scoring a text is the same recursion for every position at once: per order, one hash pass and
two np.searchsorted lookups. All orders 1..N are scored in one pass (the tables of every order
hold both raw and continuation counts, so the model of order k is the order-k raw table over the
continuation tables below it), and the best one is the baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..corpus.text import Corpus
from ..errors import ConfigError, CorpusError
from ..evaluation import EvalResult
from ..util import csv_text, json_safe
from .context import evaluation_text

SCHEMA = "charlm.ngram/1"
MAX_ORDER = 20
MAX_TOKENS = 8_000_000         # default cap on the training tokens counted (memory: see above)
TOKEN_CAP = 200_000_000        # the most a user may ask for
PRUNE_ABOVE = 4                # orders above this drop the n-grams seen once
_MUL = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(prev: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The hash of (history hash, next token): splitmix64 of prev + (id + 1) * golden ratio.
    uint64 arithmetic wraps around in numpy, which is what a hash wants."""
    with np.errstate(over="ignore"):
        x = prev + (ids.astype(np.uint64) + np.uint64(1)) * _MUL
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def gram_keys(ids: np.ndarray, order: int) -> list[np.ndarray]:
    """keys[k] (N,) for k = 0 .. order: the hash of the k-gram ending at each position t
    (keys[0] is the empty history, all zero). Positions t < k - 1 have no full k-gram: their
    keys[k] are those of the shorter gram starting the text, harmless (they are masked out where
    counted, and are the right history when scoring the start of a text)."""
    ids = np.asarray(ids)
    keys = [np.zeros(len(ids), dtype=np.uint64)]
    for _ in range(order):
        prev = np.empty_like(keys[-1])
        prev[0] = 0
        prev[1:] = keys[-1][:-1]                 # the (k-1)-gram ending at t - 1: t's history
        keys.append(_mix(prev, ids))
    return keys


@dataclass
class Table:
    """One order's counts, sorted for lookup. grams: n-gram keys with their count; hists: history
    keys with their total count and back-off mass (see the module docstring)."""

    grams: np.ndarray
    counts: np.ndarray
    hists: np.ndarray
    totals: np.ndarray
    backoff: np.ndarray
    discount: float
    pruned: int = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.grams, self.counts, self.hists, self.totals, self.backoff))


def _unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys, an index of each in ``keys``, its count): np.unique's answer without the
    stable sort that return_index costs (any occurrence will do here), about 3x faster."""
    perm = np.argsort(keys)
    ordered = keys[perm]
    start = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    count = np.diff(np.append(start, len(keys)))
    return ordered[start], perm[start], count


def _discount(counts: np.ndarray) -> float:
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    d = n1 / (n1 + 2 * n2) if n1 + n2 > 0 else 0.5
    return float(min(0.95, max(0.05, d)))


def _table(gram: np.ndarray, hist: np.ndarray, count: np.ndarray, prune: bool) -> Table:
    """A table from unique n-grams (gram keys, their history keys, their counts)."""
    d = _discount(count)
    hists, inv = np.unique(hist, return_inverse=True)          # (U,) -> its history's index
    totals = np.bincount(inv, weights=count, minlength=len(hists))
    backoff = d * np.bincount(inv, minlength=len(hists)).astype(np.float64)
    pruned = 0
    if prune:
        drop = count == 1
        pruned = int(drop.sum())
        backoff += np.bincount(inv[drop], weights=count[drop] - d, minlength=len(hists))
        gram, count = gram[~drop], count[~drop]
        # A history left with no n-gram passes the lower order through: drop it as well.
        kept = np.bincount(inv[~drop], minlength=len(hists)) > 0
        hists, totals, backoff = hists[kept], totals[kept], backoff[kept]
    order = np.argsort(gram)
    return Table(grams=gram[order], counts=count[order].astype(np.float64), hists=hists,
                 totals=totals.astype(np.float64), backoff=backoff, discount=d, pruned=pruned)


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, found) of each key in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    i = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return i, sorted_keys[i] == keys


class KneserNey:
    """An interpolated Kneser-Ney model of every order 1..``order`` over ids in [0, vocab_size).

    ``raw[k]`` and ``cont[k]`` are order k's tables of raw and continuation counts (k = 1..order;
    cont[order] is not needed and is None). ``logprobs(ids)`` scores a text under every order.
    """

    def __init__(self, ids: np.ndarray, vocab_size: int, order: int, prune_above: int = PRUNE_ABOVE):
        check_order(order)
        if vocab_size < 1:
            raise ConfigError(f"the vocabulary size must be at least 1, got {vocab_size}")
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) < 2:
            raise CorpusError(f"the n-gram model needs at least 2 training tokens, got {len(ids)}")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ConfigError(f"token ids must lie in [0, {vocab_size}); the text does not fit this vocabulary")
        self.vocab_size, self.order, self.prune_above = vocab_size, order, prune_above
        self.tokens = len(ids)
        self.raw: list[Optional[Table]] = [None] * (order + 1)
        self.cont: list[Optional[Table]] = [None] * (order + 1)
        # Three arrays of one key per token are alive at once: the keys of the (k-2)-, (k-1)- and
        # k-grams ending at each position. The history of the k-gram ending at t is the
        # (k-1)-gram ending at t - 1, so it is read from the previous array, never stored.
        older = prev = None                                                 # keys of orders k - 2, k - 1
        keys = _mix(np.zeros(len(ids), dtype=np.uint64), ids)               # 1-grams
        for k in range(1, order + 1):
            grams, first, count = _unique(keys[k - 1:])                     # full k-grams only
            first += k - 1                                                  # (U,) a position of each
            hist = np.zeros(len(first), dtype=np.uint64) if k == 1 else prev[first - 1]
            self.raw[k] = _table(grams, hist, count, prune=k > prune_above)
            if k > 1:
                # Order k - 1's continuation counts: the distinct k-grams (= distinct left
                # extensions) that end with each (k-1)-gram.
                suffixes, at, ccount = _unique(prev[first])
                at = first[at]                                              # a position of each
                hist = np.zeros(len(at), dtype=np.uint64) if k == 2 else older[at - 1]
                self.cont[k - 1] = _table(suffixes, hist, ccount, prune=k - 1 > prune_above)
            older, prev = prev, keys
            if k < order:
                keys = _mix(np.concatenate([[np.uint64(0)], keys[:-1]]), ids)
        self.nbytes = sum(t.nbytes for t in self.raw[1:] + self.cont[1:-1] if t is not None)

    def _level(self, table: Table, hist: np.ndarray, gram: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """p_k from p_(k-1) (``lower``) for histories/grams given by keys (any shape)."""
        hi, hfound = _lookup(table.hists, hist)
        gi, gfound = _lookup(table.grams, gram)
        c = np.where(gfound, table.counts[gi], 0.0)
        total = np.where(hfound, table.totals[hi], 1.0)
        back = np.where(hfound, table.backoff[hi], 1.0)
        p = (np.maximum(c - table.discount, 0.0) + back * lower) / total
        return np.where(hfound, p, lower)

    def logprobs(self, ids: np.ndarray) -> np.ndarray:
        """ln p(ids[t] | the up to n - 1 tokens before it in ``ids``), (order, N - 1): row k - 1
        is the model of order k; column t - 1 scores ids[t] (the first token is only read)."""
        ids = np.asarray(ids, dtype=np.int64)
        keys = gram_keys(ids, self.order)
        out = np.empty((self.order, len(ids) - 1))
        lower = np.full(len(ids) - 1, 1.0 / self.vocab_size)            # order 0: uniform
        for k in range(1, self.order + 1):
            hist = keys[k - 1][:-1]                                        # the (k-1)-gram ending at t - 1
            gram = keys[k][1:]                                             # the k-gram ending at t
            if k == 1:
                hist = np.zeros_like(hist)
            out[k - 1] = np.log(self._level(self.raw[k], hist, gram, lower))
            if k < self.order:
                lower = self._level(self.cont[k], hist, gram, lower)
        return out

    def distribution(self, history: np.ndarray, order: Optional[int] = None) -> np.ndarray:
        """p(w | history) for every w of the vocabulary (V,), under the model of ``order``
        (default the highest): the history's last order - 1 tokens are used."""
        order = self.order if order is None else order
        history = np.asarray(history, dtype=np.int64)[-(order - 1):] if order > 1 else np.zeros(0, np.int64)
        V = self.vocab_size
        # Every candidate appended to the history: (V, len + 1) texts, the last column scored.
        texts = np.concatenate([np.broadcast_to(history, (V, len(history))), np.arange(V)[:, None]], 1)
        keys = [gram_keys(row, order) for row in texts]
        p = np.full(V, 1.0 / V)
        L = len(history)
        for k in range(1, order + 1):
            if k - 1 > L:
                break
            hist = np.array([row[k - 1][L - 1] if k > 1 else 0 for row in keys], dtype=np.uint64)
            gram = np.array([row[k][L] for row in keys], dtype=np.uint64)
            table = self.raw[k] if k == order else self.cont[k]
            p = self._level(table, hist, gram, p)
        return p


def check_order(order: Any) -> None:
    if not (isinstance(order, int) and not isinstance(order, bool) and 1 <= order <= MAX_ORDER):
        raise ConfigError(f"--order must be a whole number from 1 to {MAX_ORDER}, got {order!r}")


def check_tokens(max_tokens: Any) -> None:
    if not (isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 2 <= max_tokens <= TOKEN_CAP):
        raise ConfigError(f"--max-tokens must be a whole number from 2 to {TOKEN_CAP:,}, got {max_tokens!r}")


@dataclass
class NGramStudy:
    """Bits per character of every order on one text, the best order, and what it cost."""

    train_inputs: str
    eval_inputs: str
    train_tokens: int
    eval_tokens: int
    eval_chars: int
    vocab_size: int
    orders: list[dict[str, Any]]
    best_order: int
    table_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    run_bits_per_char: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        return json_safe({"schema": SCHEMA,
                          "train": {"inputs": self.train_inputs, "tokens": self.train_tokens},
                          "eval": {"inputs": self.eval_inputs, "tokens": self.eval_tokens, "chars": self.eval_chars},
                          "vocab_size": self.vocab_size, "orders": self.orders, "best_order": self.best_order,
                          "run_bits_per_char": self.run_bits_per_char,
                          "table_bytes": self.table_bytes, "seconds": self.seconds})

    def csv_text(self) -> str:
        rows = [["order", "bits_per_char", "loss", "discount", "ngrams_kept", "ngrams_pruned"]]
        rows += [[o["order"], o["bits_per_char"], o["loss"], o["discount"], o["ngrams_kept"], o["ngrams_pruned"]]
                 for o in self.orders]
        return csv_text(rows)


def bits_per_char(nats: np.ndarray, n_tokens: int, chars: int) -> float:
    """charlm evaluate's accounting (charlm.evaluation.EvalResult): total nats over the N - 1
    predicted tokens, divided by the characters they cover (chars * (N - 1) / N), in bits."""
    return EvalResult(nats=float(np.sum(nats)), tokens=n_tokens - 1, chars=chars * (n_tokens - 1) / n_tokens).bits_per_char


def measure(train_ids: np.ndarray, eval_ids: np.ndarray, eval_chars: int, vocab_size: int, order: int,
            train_inputs: str = "ids given", eval_inputs: str = "ids given",
            prune_above: int = PRUNE_ABOVE) -> tuple[NGramStudy, KneserNey, np.ndarray]:
    """Train on train_ids, score eval_ids under every order: (study, model, logprobs (order, N - 1))."""
    check_order(order)
    if len(eval_ids) < 2:
        raise CorpusError(f"the text to evaluate has {len(eval_ids)} tokens: at least two are needed")
    t0 = time.perf_counter()
    model = KneserNey(train_ids, vocab_size, order, prune_above)
    t1 = time.perf_counter()
    lp = model.logprobs(eval_ids)
    t2 = time.perf_counter()
    orders = []
    for k in range(1, order + 1):
        raw = model.raw[k]
        orders.append({"order": k, "bits_per_char": bits_per_char(-lp[k - 1], len(eval_ids), eval_chars),
                       "loss": float(-lp[k - 1].mean()), "discount": raw.discount,
                       "ngrams_kept": int(len(raw.grams)), "ngrams_pruned": raw.pruned})
    best = min(orders, key=lambda o: o["bits_per_char"])["order"]
    study = NGramStudy(train_inputs=train_inputs, eval_inputs=eval_inputs, train_tokens=len(train_ids),
                       eval_tokens=len(eval_ids), eval_chars=eval_chars, vocab_size=vocab_size, orders=orders,
                       best_order=best, table_bytes=model.nbytes,
                       seconds={"train": round(t1 - t0, 3), "score": round(t2 - t1, 3)})
    return study, model, lp


def _text_range(corpus: Corpus, end: int, keep: int) -> str:
    """The last ``keep`` characters before character ``end`` of a corpus, read block by block so
    that only they are ever held."""
    lo, pos, pieces = max(0, end - keep), 0, []
    for block in corpus.blocks():
        a, b = max(lo, pos), min(end, pos + len(block))
        if a < b:
            pieces.append(block[a - pos:b - pos])
        pos += len(block)
        if pos >= end:
            break
    return "".join(pieces)


def training_text(ckpt, file: Optional[str] = None, max_chars: int = MAX_TOKENS) -> tuple[str, str]:
    """(text, description): the last ``max_chars`` characters of ``file``, else of the training
    split of the checkpoint's corpus (all but its last val_fraction of characters, as `charlm
    train` splits it). The corpus is read twice, block by block (its length, then the tail), so
    a 100 MB corpus costs ``max_chars`` characters of memory, not 100 MB."""
    if file is not None:
        corpus, what, frac = Corpus.resolve(str(file)), str(file), None
    else:
        spec = ckpt.corpus_path
        if not spec:
            raise CorpusError("the checkpoint does not name its corpus; give --train FILE")
        try:
            corpus = Corpus.resolve(str(spec))
        except CorpusError:
            raise CorpusError(f"the checkpoint's corpus {spec} is gone; give --train FILE") from None
        frac = float(ckpt.trained("val_fraction", 0.1))
        what = f"{spec} (first {1 - frac:g}: the training split)"
    total = sum(len(block) for block in corpus.blocks())
    end = total if frac is None else total - max(1, int(round(total * frac)))
    text = _text_range(corpus, end, max_chars)
    if len(text) < end:
        what += f", its last {len(text):,} characters"
    return text, what


def study(lm, file: Optional[str] = None, train: Optional[str] = None, order: int = 10,
          max_tokens: int = MAX_TOKENS, text: Optional[str] = None) -> NGramStudy:
    """`charlm ngram RUN [FILE]`: a Kneser-Ney model of every order up to ``order`` on the run's
    training split (or ``train``) with the run's tokenizer, scored on FILE (default: the run's
    validation split) with evaluate's bits-per-character accounting, beside the run's own figure."""
    check_order(order)
    check_tokens(max_tokens)
    # A token covers at least one character, so the last max_tokens characters hold at most
    # max_tokens tokens (exactly that many with the char tokenizer).
    train_text, train_inputs = training_text(lm.checkpoint, train, max_tokens)
    if text is None:
        text, inputs = evaluation_text(lm.checkpoint, file)
    else:
        inputs = "text given"
    train_ids = lm.tokenizer.encode(train_text)
    eval_ids = lm.tokenizer.encode(text)
    result, _, _ = measure(train_ids, eval_ids, len(text), lm.tokenizer.vocab_size, order,
                           train_inputs, inputs)
    return result


def ngram_summary(study: NGramStudy) -> str:
    best = study.orders[study.best_order - 1]
    return f"best order {study.best_order}: {best['bits_per_char']:.4f} bits/char"


__all__ = ["KneserNey", "NGramStudy", "measure", "study", "training_text", "bits_per_char", "check_order",
           "MAX_ORDER"]
