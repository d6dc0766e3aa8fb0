"""Streaming generation with carried state.

The prime is run through the model once; after that each new token costs one recurrent step with
the state carried (no re-encoding of the context), so generation is constant cost per token.
Several samples are generated together as one batch.
"""

from __future__ import annotations

import random
from typing import Iterator, Optional

import torch

from .config import SampleConfig
from .errors import TokenizerError
from .util import torch_threads
from .model import CharRNN
from .corpus.tokenizers import CharTokenizer, StreamDecoder, Tokenizer

DEFAULT_PRIME = "\n"
# Batch x hidden size up to which a CPU generation step runs on one thread. Such a step is a few
# small products and a dozen tiny ops; on a 2-core machine shared with other work a second thread
# made every op wait for it (64 samples at 512 units: 885 characters/s on two threads, 8,489 on one,
# at load 6-9; benchmarks/sampling_speed.py).
SINGLE_THREAD_WORK = 64 * 512


def filter_logits(logits: torch.Tensor, temperature: float, top_k: Optional[int],
                  top_p: Optional[float]) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering of logits (B, V)."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]             # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach p; the most likely one always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def encode_prime(tokenizer: Tokenizer, prime: str) -> list[int]:
    unknown = tokenizer.unknown_chars(prime)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:20])
        raise TokenizerError(f"the prime has characters the model's vocabulary lacks: {shown} "
                             f"(the model was trained on text without them)")
    return [int(i) for i in tokenizer.encode(prime)]


def generate_ids(model: CharRNN, tokenizer: Tokenizer, config: SampleConfig,
                 device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Yield the next token ids (num_samples,) one step at a time."""
    config.validate()
    model.eval()
    if config.prime:
        prime_ids = encode_prime(tokenizer, config.prime)
    elif not tokenizer.unknown_chars(DEFAULT_PRIME):
        prime_ids = [int(i) for i in tokenizer.encode(DEFAULT_PRIME)]
    else:  # a vocabulary without newlines: start from its first real token
        prime_ids = [1 if isinstance(tokenizer, CharTokenizer) else 0]
    seed = config.seed if config.seed is not None else random.randrange(2**63)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    B = config.num_samples
    threads = _step_threads(device, B, model.config.hidden_size)
    with torch.no_grad(), torch_threads(threads):
        x = torch.tensor([prime_ids] * B, dtype=torch.long, device=device)   # (B, P)
        logits, state = model(x)                                          # the prime in one pass
    last = logits[:, -1, :]                                               # (B, V)
    state = model.split_state(state)
    # Detached weights: the steps below build no graph without a grad context.
    step = model.stepper(column_major=threads == 1 and B <= 2)
    # A char model never samples <unk> (id 0): draw from the other ids and shift back by one.
    skip = 1 if isinstance(tokenizer, CharTokenizer) and last.size(-1) > 1 else 0
    for _ in range(config.length):
        with torch_threads(threads):  # around the work only: the caller's setting holds between yields
            filtered = filter_logits(last[:, skip:], config.temperature, config.top_k, config.top_p)
            probs = torch.softmax(filtered, dim=-1).cpu()                   # (B, V - skip)
            # Exponential race: argmax(p / E) with E ~ Exp(1) i.i.d. is an exact draw from p
            # (the Gumbel-max trick), a quarter of torch.multinomial's cost for one row.
            race = torch.empty_like(probs).exponential_(generator=gen).clamp_(min=1e-30)  # never 0/0
            nxt = (probs / race).argmax(dim=-1) + skip                    # (B,)
            last, state = step(nxt.to(device), state)                     # one step, state carried
        yield nxt


def _step_threads(device: torch.device | str, batch: int, hidden: int) -> Optional[int]:
    """Intra-op threads for one generation step: one on CPU for small batches, where the step is a
    memory-bound matrix product that a second thread barely speeds up but makes wait on every op
    (badly, on a busy machine). None: leave the setting alone."""
    if torch.device(device).type != "cpu" or batch * hidden > SINGLE_THREAD_WORK:
        return None
    return 1




def generate(model: CharRNN, tokenizer: Tokenizer, config: SampleConfig,
             device: torch.device | str = "cpu") -> Iterator[list[str]]:
    """Yield, per step, the newly settled display text of each sample (a list of num_samples)."""
    decoders = [StreamDecoder(tokenizer) for _ in range(config.num_samples)]
    for ids in generate_ids(model, tokenizer, config, device):
        yield [d.push(int(i)) for d, i in zip(decoders, ids.tolist())]
    yield [d.flush() for d in decoders]


def sample_text(model: CharRNN, tokenizer: Tokenizer, config: SampleConfig,
                device: torch.device | str = "cpu") -> list[str]:
    """Whole samples as strings (the prime not included)."""
    texts: list[list[str]] = [[] for _ in range(config.num_samples)]
    for step in generate(model, tokenizer, config, device):
        for i, piece in enumerate(step):
            texts[i].append(piece)
    return ["".join(t) for t in texts]
