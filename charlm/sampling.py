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
from .model import CharRNN
from .tokenizers import CharTokenizer, StreamDecoder, Tokenizer

DEFAULT_PRIME = "\n"


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


@torch.inference_mode()
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
    x = torch.tensor([prime_ids] * B, dtype=torch.long, device=device)   # (B, P)
    logits, state = model(x)                                              # (B, P, V)
    last = logits[:, -1, :]
    banned = 0 if isinstance(tokenizer, CharTokenizer) else None  # never sample <unk>
    for _ in range(config.length):
        filtered = filter_logits(last, config.temperature, config.top_k, config.top_p)
        if banned is not None and filtered.size(-1) > 1:
            filtered[:, banned] = float("-inf")
        probs = torch.softmax(filtered, dim=-1).cpu()                       # (B, V)
        nxt = torch.multinomial(probs, 1, generator=gen)                    # (B, 1)
        yield nxt[:, 0]
        logits, state = model(nxt.to(device), state)                        # (B, 1, V)
        last = logits[:, -1, :]


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
