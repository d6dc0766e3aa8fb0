"""Generation with carried state: sampling, greedy decoding, beam search, and an interactive session.

The prime is run through the model in chunks of PRIME_CHUNK tokens with the state carried, so
memory stays flat for a prime of any length; after that each new token costs one recurrent step
(no re-encoding of the context). Several samples are generated together as one batch, each row
with its own random generator seeded ``seed + i``: sample i of a batch is exactly the text a
single sample with seed ``seed + i`` gives, which lets the CLI stream samples one after another.

A sample is ``length`` characters *as displayed*: ids go through the tokenizer's StreamDecoder
(sentencepiece pieces decoded, NFD jamo recomposed into syllables) and the characters that come out
are counted. For an NFD model the last character is never a loose conjoining jamo: while the last
character is being formed, tokens that would leave it dangling are masked (``SyllableGuard``;
a sentencepiece model with NFD is counted the same way but not guarded).
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .config import MAX_SEED, SampleConfig
from .errors import NumericError, TokenizerError
from .limits import steps_per_call
from .threads import torch_threads
from .model import Model, State
from .corpus.tokenizers import CharTokenizer, StreamDecoder, Tokenizer

DEFAULT_PRIME = "\n"
# Tokens of the prime run through the model at once: the activations and logits of one chunk
# (PRIME_CHUNK x vocabulary floats) are all the prime costs in memory, whatever its length.
PRIME_CHUNK = 4096
# Batch x hidden size up to which a CPU generation step runs on one thread. Such a step is a few
# small products and a dozen tiny ops; on a 2-core machine shared with other work a second thread
# made every op wait for it, about ten times slower than one thread (benchmarks/sampling_speed.py).
SINGLE_THREAD_WORK = 64 * 512
SEED_SPACE = MAX_SEED + 1   # seeds are whole numbers in [0, 2**63), as config.check_seed says
# Temperatures below this take the careful path in filter_logits: logits of a few hundred divided
# by it stay far inside float32's range (3.4e38).
TINY_TEMPERATURE = 1e-30
# The finiteness of the scores is checked after the prime and then every this many steps: NaN
# weights show at once, a damaged embedding row soon after it is first drawn; a check every step
# cost several percent of a small model's step.
FINITE_CHECK_EVERY = 16


def max_tokens(length: int) -> int:
    """A bound on the tokens spent for ``length`` displayed characters. A character is one to three
    tokens (a Hangul syllable in NFD, a multi-byte character in sentencepiece byte fallback), and a
    piece may decode to nothing; a model that keeps producing nothing visible is cut off here."""
    return 8 * length + 64


# ---------------------------------------------------------------------------------------------
# Choosing the next token

def filter_logits(logits: torch.Tensor, temperature: float, top_k: Optional[int],
                  top_p: Optional[float]) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering of logits (B, V); temperature > 0.

    Below TINY_TEMPERATURE the logits are shifted so the largest is 0 and divided in float64, so a
    tiny temperature tends to its limit, greedy, instead of overflowing into inf - inf = NaN (in
    float32, 1e-300 is 0).
    """
    if temperature < TINY_TEMPERATURE:
        logits = logits.double()
        logits = ((logits - logits.max(dim=-1, keepdim=True).values) / temperature).float()
    else:
        logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]             # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach p. The most likely one always stays
        # (a tiny p, rounded to 0 in float32, would otherwise drop them all).
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop_sorted[:, 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: torch.Tensor, config: SampleConfig, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """The next id of each row from logits (B, V): argmax at temperature 0, else a draw."""
    if config.temperature == 0:
        return logits.argmax(dim=-1).cpu()                                # ties: the lowest id
    filtered = filter_logits(logits, config.temperature, config.top_k, config.top_p)
    probs = torch.softmax(filtered, dim=-1).cpu()                         # (B, V)
    # Exponential race: argmax(p / E) with E ~ Exp(1) i.i.d. is an exact draw from p (the
    # Gumbel-max trick), a quarter of torch.multinomial's cost for one row. One generator per row.
    race = torch.empty_like(probs)
    for row, gen in zip(race, gens):
        row.exponential_(generator=gen)
    return (probs / race.clamp_(min=1e-30)).argmax(dim=-1)               # never 0/0


def check_finite(logits: torch.Tensor) -> None:
    if not bool(torch.isfinite(logits).all()):
        raise NumericError("the model's scores for the next token are not finite numbers (NaN or "
                           "inf): its weights are damaged or its training diverged; sample from "
                           "another checkpoint")


# ---------------------------------------------------------------------------------------------
# The prime

def encode_prime(tokenizer: Tokenizer, prime: str) -> np.ndarray:
    unknown = tokenizer.unknown_chars(prime)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:20])
        raise TokenizerError(f"the prime has characters the model's vocabulary lacks: {shown} "
                             f"(the model was trained on text without them)")
    return np.asarray(tokenizer.encode(prime), dtype=np.int64)


def prime_ids(tokenizer: Tokenizer, prime: str) -> np.ndarray:
    """The prime's ids; with no prime a newline, or the first real token of a vocabulary without one."""
    if prime:
        return encode_prime(tokenizer, prime)
    if not tokenizer.unknown_chars(DEFAULT_PRIME):
        return np.asarray(tokenizer.encode(DEFAULT_PRIME), dtype=np.int64)
    return np.asarray([1 if isinstance(tokenizer, CharTokenizer) else 0], dtype=np.int64)


def run_prime(model: Model, ids: np.ndarray, device: torch.device | str,
              state: Optional[list[State]] = None) -> tuple[torch.Tensor, list[State]]:
    """Run ids through the model for one sequence, PRIME_CHUNK at a time with the state carried.

    ``state`` and the state returned are in the stepper's form (one tuple per layer, batch 1; a
    zero state when None). Returns the logits after the last id (1, V) and that state.
    """
    last = None
    chunk = steps_per_call(1, model.config.vocab_size, PRIME_CHUNK)   # (1, T, V) logits bounded
    if state is None:
        state = model.step_state(1, device)
    with torch.no_grad(), torch_threads(_step_threads(device, 1, model.config.hidden_size)):
        for i in range(0, len(ids), chunk):
            x = torch.from_numpy(ids[i:i + chunk]).to(device).unsqueeze(0)   # (1, <= chunk)
            logits, state = model.read(x, state)
            last = logits[:, -1, :]                                       # (1, V)
    if last is None:
        raise TokenizerError("the prime encodes to no tokens")
    return last, state


def _step_threads(device: torch.device | str, batch: int, hidden: int) -> Optional[int]:
    """Intra-op threads for one generation step: one on CPU for small batches, where the step is a
    memory-bound matrix product that a second thread barely speeds up but makes wait on every op
    (badly, on a busy machine). None: leave the setting alone."""
    if torch.device(device).type != "cpu" or batch * hidden > SINGLE_THREAD_WORK:
        return None
    return 1


def _skip(tokenizer: Tokenizer, vocab: int) -> int:
    # A char model never samples <unk> (id 0): choose among the other ids and shift back by one.
    return 1 if isinstance(tokenizer, CharTokenizer) and vocab > 1 else 0


# ---------------------------------------------------------------------------------------------
# Where a sample ends: length in displayed characters, stop strings, whole syllables

def is_dangling_jamo(ch: str) -> bool:
    """A conjoining Hangul jamo shown on its own (not recomposed into a syllable)."""
    return "\u1100" <= ch <= "\u11ff" or "\ua960" <= ch <= "\ua97f" or "\ud7b0" <= ch <= "\ud7ff"


class Ending:
    """One sample's display text: decodes its ids, counts displayed characters, holds back text
    that may still turn into a stop string, and says when the sample is done.

    ``push(id)`` returns the text that is now final; after ``done`` it returns nothing more.
    ``text`` is the whole sample so far (what has been returned).
    """

    def __init__(self, tokenizer: Tokenizer, length: int, stops: Sequence[str] = ()):
        self.decoder = StreamDecoder(tokenizer)
        self.length, self.stops = length, tuple(stops)
        self.longest_stop = max((len(s) for s in self.stops), default=0)
        self.out: list[str] = []   # released pieces (a list: a long sample is not copied per step)
        self.released = 0          # characters released
        self.pending = ""          # settled text held back: it may be the start of a stop string
        self.done = length == 0
        # One id, one settled character, no stop strings: the plain char model's fast path.
        self.one_char = self.decoder.direct and not self.stops

    @property
    def text(self) -> str:
        return "".join(self.out)

    def copy(self) -> "Ending":
        twin = object.__new__(Ending)
        twin.__dict__.update(self.__dict__)
        twin.decoder, twin.out = self.decoder.copy(), list(self.out)
        return twin

    def push(self, token_id: int) -> str:
        if self.done:
            return ""
        if self.one_char:
            piece = self.decoder.table[token_id]
            self.out.append(piece)
            self.released += 1
            self.done = self.released >= self.length
            return piece
        self.pending += self.decoder.push(token_id)
        if self._cut_at_stop():
            return self._release(len(self.pending), done=True)
        peek = self.decoder.peek()
        room = self.length - self.released
        if len(self.pending) + len(peek) >= room:
            whole = (self.pending + peek)[:room]
            # A lone leading consonant may still take its vowel: wait, unless it is already settled.
            if not is_dangling_jamo(whole[-1]) or len(self.pending) >= room:
                self.pending = whole
                self._cut_at_stop()
                return self._release(len(self.pending), done=True)
        return self._release(len(self.pending) - self._held_for_stops())

    def finish(self) -> str:
        """The rest of the text when generation stops before the sample is done."""
        if self.done:
            return ""
        self.pending = (self.pending + self.decoder.flush())[:self.length - self.released]
        self._cut_at_stop()
        return self._release(len(self.pending), done=True)

    def _cut_at_stop(self) -> bool:
        """Cut the held text at the first stop string in it. Released text never holds the start of
        one (see _held_for_stops), so every stop string that ends in new text starts in here."""
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = self.pending[:min(hits)]
        return bool(hits)

    def _held_for_stops(self) -> int:
        """Characters at the end of the held text that could be the start of a stop string."""
        for k in range(min(self.longest_stop - 1, len(self.pending)), 0, -1):
            tail = self.pending[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def _release(self, upto: int, done: bool = False) -> str:
        piece, self.pending = self.pending[:upto], self.pending[upto:]
        if piece:
            self.out.append(piece)
            self.released += len(piece)
        self.done = self.done or done
        return piece


class SyllableGuard:
    """For a char model with NFD: masks the tokens that would leave the sample's last character a
    loose jamo (a leading consonant with no vowel, a vowel or final consonant with no syllable).

    Only the last character is guarded; the model's text before it is left as it chose it.
    """

    def __init__(self, tokenizer: CharTokenizer):
        self.chars = tokenizer.itos

    def mask(self, logits: torch.Tensor, endings: Sequence[Ending]) -> torch.Tensor:
        """logits (B, V) with -inf where a token would leave a row's last character dangling."""
        banned = [self._banned(e) for e in endings]
        if not any(banned):
            return logits
        logits = logits.clone()
        for row, ids in enumerate(banned):
            if ids:
                logits[row, ids] = float("-inf")
        return logits

    def _banned(self, ending: Ending) -> list[int]:
        if ending.done:
            return []
        held = ending.decoder.held
        settled = ending.released + len(ending.pending) + len(unicodedata.normalize("NFC", held))
        if settled < ending.length - 1:
            return []                    # the last character is not being formed yet
        banned = [i for i, c in enumerate(self.chars) if i > 0 and self._leaves_dangling(ending, held, c)]
        return [] if len(banned) >= len(self.chars) - 1 else banned   # never ban every token

    def _leaves_dangling(self, ending: Ending, held: str, c: str) -> bool:
        starter = unicodedata.combining(c) == 0 and not ("\u1160" <= c <= "\u11ff" or "\ud7b0" <= c <= "\ud7ff")
        if starter:
            settled, cluster = ending.pending + unicodedata.normalize("NFC", held), c
        else:
            settled, cluster = ending.pending, held + c
        shown = settled + unicodedata.normalize("NFC", cluster)     # after what is released
        room = ending.length - ending.released
        if len(shown) < room:
            return False
        last = shown[room - 1]
        if not is_dangling_jamo(last):
            return False
        # A lone leading consonant at the very end may still take a vowel.
        can_grow = len(shown) == room and ("\u1100" <= last <= "\u115f" or "\ua960" <= last <= "\ua97f")
        return not can_grow


def _guard(tokenizer: Tokenizer) -> Optional[SyllableGuard]:
    return SyllableGuard(tokenizer) if isinstance(tokenizer, CharTokenizer) and tokenizer.normalize == "nfd" else None


# ---------------------------------------------------------------------------------------------
# Sampling (a batch of samples, each with its own generator)

def stops(config: SampleConfig) -> tuple[str, ...]:
    """The stop strings: the user's, and for a --records model the separator (a record's end)."""
    return config.stop + ((config.record_sep,) if config.record_sep is not None else ())


@dataclass
class Carry:
    """What generation carries from one step to the next: the logits for the next token (B, V) and
    the state in the stepper's form (one tuple per layer, each (B, H))."""

    last: torch.Tensor
    state: list


def start(model: Model, tokenizer: Tokenizer, prime: str, batch: int,
          device: torch.device | str, record_sep: Optional[str] = None) -> Carry:
    """Run the prime once and copy its state to ``batch`` rows.

    With ``record_sep`` (a --records model) the sample is a new record: from a zero state the model
    reads the separator (which opens a record, see charlm.records), then the prime, which the
    sample continues.
    """
    model.eval()
    if record_sep is None:
        ids = prime_ids(tokenizer, prime)
    else:
        ids = np.concatenate([encode_prime(tokenizer, record_sep), encode_prime(tokenizer, prime)])
    last, state = run_prime(model, ids, device)
    state = [tuple(s.expand(batch, *s.shape[1:]).contiguous() for s in layer) for layer in state]   # (B, ...)
    return Carry(last.expand(batch, -1).contiguous(), state)


def generators(seed: Optional[int], count: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded seed, seed + 1, ... (a random seed when None)."""
    seed = random.randrange(SEED_SPACE) if seed is None else seed
    return [torch.Generator(device="cpu").manual_seed((seed + i) % SEED_SPACE) for i in range(count)]


def continue_samples(model: Model, tokenizer: Tokenizer, config: SampleConfig, carry: Carry,
                     gens: Sequence[torch.Generator], device: torch.device | str) -> Iterator[list[str]]:
    """Yield, per step, the new display text of each row; ``carry`` is updated as it goes."""
    B = carry.last.size(0)
    endings = [Ending(tokenizer, config.length, stops(config)) for _ in range(B)]
    threads = _step_threads(device, B, model.config.hidden_size)
    # Detached weights: the steps below build no graph without a grad context.
    step = model.stepper(column_major=threads == 1 and B <= 2)
    skip = _skip(tokenizer, carry.last.size(-1))
    guard = _guard(tokenizer)
    for n in range(max_tokens(config.length)):
        if all(e.done for e in endings):
            break
        with torch_threads(threads):  # around the work only: the caller's setting holds between yields
            logits = carry.last
            if n % FINITE_CHECK_EVERY == 0:
                check_finite(logits)
            if guard is not None:
                logits = guard.mask(logits, endings)
            nxt = choose(logits[:, skip:], config, gens) + skip                # (B,)
            carry.last, carry.state = step(nxt.to(device), carry.state)     # one step, state carried
        yield [e.push(i) for e, i in zip(endings, nxt.tolist())]
    yield [e.finish() for e in endings]


def generate(model: Model, tokenizer: Tokenizer, config: SampleConfig,
             device: torch.device | str = "cpu") -> Iterator[list[str]]:
    """Yield, per step, the newly settled display text of each sample (a list of num_samples).

    With ``beam``, the search runs to its end and the best text comes as one piece.
    """
    config.validate()
    if config.beam is not None:
        yield [beam_search(model, tokenizer, config, device)]
        return
    carry = start(model, tokenizer, config.prime, config.num_samples, device, config.record_sep)
    yield from continue_samples(model, tokenizer, config, carry,
                                generators(config.seed, config.num_samples), device)


def sample_text(model: Model, tokenizer: Tokenizer, config: SampleConfig,
                device: torch.device | str = "cpu") -> list[str]:
    """Whole samples as strings (the prime not included)."""
    texts: list[list[str]] = [[] for _ in range(config.num_samples)]
    for step in generate(model, tokenizer, config, device):
        for i, piece in enumerate(step):
            texts[i].append(piece)
    return ["".join(t) for t in texts]


# ---------------------------------------------------------------------------------------------
# Beam search

@dataclass
class Hypothesis:
    logp: float        # total log-probability of its tokens
    tokens: int
    ending: Ending
    row: int           # its row in the batch of live hypotheses

    @property
    def score(self) -> float:
        """Length-normalised: mean log-probability per token, so a hypothesis that ended early on
        a stop string (or took fewer tokens for its characters) is compared fairly."""
        return self.logp / max(self.tokens, 1)


def beam_search(model: Model, tokenizer: Tokenizer, config: SampleConfig,
                device: torch.device | str = "cpu") -> str:
    """The continuation with the best length-normalised log-probability among ``beam`` beams.

    Each step extends every live hypothesis by every token, keeps the ``beam`` best by total
    log-probability (all live ones have the same token count, so that is the normalised order
    too), and sets aside those that are done (length reached or a stop string produced). The
    search ends when ``beam`` hypotheses are done; the winner is the done one with the highest
    mean log-probability per token. Temperature, top-k, top-p and seed do not apply.
    """
    width = config.beam or 1
    carry = start(model, tokenizer, config.prime, 1, device, config.record_sep)
    step = model.stepper()
    skip = _skip(tokenizer, carry.last.size(-1))
    guard = _guard(tokenizer)
    live = [Hypothesis(0.0, 0, Ending(tokenizer, config.length, stops(config)), 0)]
    done: list[Hypothesis] = [live[0]] if live[0].ending.done else []
    for _ in range(max_tokens(config.length)):
        if len(done) >= width or not live:
            break
        check_finite(carry.last)
        logits = carry.last if guard is None else guard.mask(carry.last, [h.ending for h in live])
        logp = F.log_softmax(logits[:, skip:].double(), dim=-1).cpu()           # (K, V')
        total = logp + torch.tensor([h.logp for h in live], dtype=torch.float64)[:, None]
        best = torch.topk(total.flatten(), min(2 * width, total.numel()))
        live, parents, ids = _extend(live, best, logp.size(1), skip, width, done)
        if not live:
            break
        state = [tuple(s[parents] for s in layer) for layer in carry.state]
        carry.last, carry.state = step(torch.tensor(ids, device=device), state)
    pool = done or live
    winner = max(pool, key=lambda h: h.score)
    winner.ending.finish()
    return winner.ending.text


def _extend(live: list[Hypothesis], best, vocab: int, skip: int, width: int,
            done: list[Hypothesis]) -> tuple[list[Hypothesis], list[int], list[int]]:
    """Turn the best (hypothesis, token) pairs into the next live hypotheses; done ones go to done."""
    new, parents, ids = [], [], []
    for value, flat in zip(best.values.tolist(), best.indices.tolist()):
        parent, token = divmod(flat, vocab)
        ending = live[parent].ending.copy()
        ending.push(token + skip)
        hyp = Hypothesis(value, live[parent].tokens + 1, ending, len(new))
        if ending.done:
            done.append(hyp)
        elif len(new) < width:
            new.append(hyp)
            parents.append(live[parent].row)
            ids.append(token + skip)
    return new, parents, ids


# ---------------------------------------------------------------------------------------------
# Interactive session: one carried state across turns

class Session:
    """A conversation with a model: text fed in and text generated both continue one state.

    ``feed(text)`` runs the user's text through the model; ``reply()`` generates ``config.length``
    characters from there (streamed); ``top(n)`` gives the n likeliest next tokens; ``pick(id)``
    appends a chosen one; ``reset()`` starts again from the bare prime.
    """

    def __init__(self, model: Model, tokenizer: Tokenizer, config: SampleConfig,
                 device: torch.device | str = "cpu"):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.config = config.validate()
        self.gens = generators(config.seed, 1)
        self.reset()

    def reset(self) -> None:
        self.carry = start(self.model, self.tokenizer, self.config.prime, 1, self.device,
                           self.config.record_sep)

    def feed(self, text: str) -> None:
        if not text:
            return
        last, state = run_prime(self.model, encode_prime(self.tokenizer, text), self.device, self.carry.state)
        self.carry = Carry(last, state)

    def reply(self) -> Iterator[str]:
        for pieces in continue_samples(self.model, self.tokenizer, self.config, self.carry,
                                       self.gens, self.device):
            yield pieces[0]

    def top(self, n: int) -> list[tuple[int, str, float]]:
        """The n likeliest next tokens: (id, display text, probability), best first."""
        check_finite(self.carry.last)
        skip = _skip(self.tokenizer, self.carry.last.size(-1))
        probs = torch.softmax(self.carry.last[0, skip:].double(), dim=-1).cpu()
        values, ids = torch.topk(probs, min(n, probs.numel()))
        return [(i + skip, self.tokenizer.decode([i + skip]), p) for i, p in zip(ids.tolist(), values.tolist())]

    def pick(self, token_id: int) -> str:
        """Append a token chosen by the user; returns its display text."""
        step = self.model.stepper()
        with torch.no_grad():
            self.carry.last, self.carry.state = step(torch.tensor([token_id], device=self.device), self.carry.state)
        return self.tokenizer.decode([token_id])
