"""Fine-tuning (``--init-from RUN``): a new run that starts from another run's weights.

The source fixes the architecture and the tokenizer. A char vocabulary grows: the new text's
characters that the old one lacks are appended at the end, so every old id keeps its embedding
and output rows, and the new rows are those a fresh model of the new size draws (same seed). A
sentencepiece tokenizer is kept as it is (its byte fallback covers any new character). The
optimizer, the schedule and the progress counters start fresh; the checkpoint records the
source (path, run id, step) under ``init_from``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import check_model_record, read_checkpoint, resolve_checkpoint
from ..config import ModelConfig, TrainConfig, option_name
from ..corpus.dataset import Dataset, encode_corpus
from ..corpus.text import Corpus, scan
from ..corpus.tokenizers import MAX_CHAR_VOCAB, CharTokenizer, Tokenizer
from ..errors import ConfigError, TokenizerError

# The options that shape the weights: a fine-tuned model must keep them.
ARCHITECTURE = ("cell", "hidden_size", "layers", "embedding_size")


@dataclass
class Source:
    """The run fine-tuned from: its weights, tokenizer, and the record the new run keeps."""

    path: Path
    weights: dict             # name -> tensor (CPU)
    tokenizer: Tokenizer
    record: dict              # {"path", "run_id", "step"}: written into every checkpoint

    def dataset(self, corpus: Corpus, folder: Path, config: TrainConfig) -> Dataset:
        """The new corpus encoded with the source's tokenizer (a char one extended first)."""
        stats = scan(corpus, self.tokenizer.normalize)
        tokenizer = self.tokenizer
        if isinstance(tokenizer, CharTokenizer):
            tokenizer = extend_chars(tokenizer, stats.counts, config.min_char_count)
        return encode_corpus(corpus, stats, tokenizer, config.val_fraction, folder)


def load_source(config: TrainConfig, model_config: Optional[ModelConfig],
                device: torch.device) -> tuple[Source, TrainConfig, ModelConfig]:
    """The checked source checkpoint, and the configs it implies (its architecture and tokenizer)."""
    path = resolve_checkpoint(config.init_from)
    ckpt = read_checkpoint(path)
    saved, tokenizer = check_model_record(ckpt, device)
    # Through the API "char" is also the default, so only a tokenizer other than it counts as given.
    refuse_other_tokenizer(path, tokenizer.kind, tokenizer.vocab_size,
                           None if config.tokenizer == "char" else config.tokenizer, config.vocab_size)
    if model_config is not None:
        for key in ARCHITECTURE:
            if getattr(model_config, key) != getattr(saved, key):
                option = "--" + option_name(key).replace('_', '-')
                raise ConfigError(f"cannot fine-tune {path}: its model has {option} {getattr(saved, key)}, "
                                  f"but {getattr(model_config, key)} was given (a fine-tuned model keeps "
                                  f"its architecture: drop the option)")
    # The regularisers are the new run's choice; the architecture (tied weights included) is the source's.
    given = model_config if model_config is not None else saved
    model_config = replace(saved, dropout=given.dropout, weight_drop=given.weight_drop)
    # The run's tokenizer options are the source's (what the saved train_config should say).
    config = replace(config, tokenizer=tokenizer.kind, normalize=tokenizer.normalize,
                     vocab_size=None if tokenizer.kind == "char" else tokenizer.vocab_size)
    step = (ckpt.progress or {}).get("step")
    record = {"path": str(path.resolve()), "run_id": ckpt.run_id, "step": step if isinstance(step, int) else None}
    return Source(path, ckpt.model, tokenizer, record), config, model_config


def refuse_other_tokenizer(path: Path, kind: str, vocab_size: int,
                           given_kind: Optional[str], given_vocab: Optional[int]) -> None:
    """A fine-tuned run keeps its source's tokenizer (the weights' rows are its ids), so a
    --tokenizer or --vocab-size that says otherwise is refused rather than silently dropped."""
    named = []
    if given_kind is not None and given_kind != kind:
        named.append(f"--tokenizer {given_kind}")
    # A char vocabulary is the texts' characters: no size can be asked of it.
    if given_vocab is not None and (kind == "char" or given_vocab != vocab_size):
        named.append(f"--vocab-size {given_vocab}")
    if named:
        size = "" if kind == "char" else f" of {vocab_size} tokens"
        raise ConfigError(f"cannot fine-tune {path} with {' and '.join(named)}: a fine-tuned run keeps its "
                          f"source's tokenizer ({kind}{size}); drop the option")


def extend_chars(tokenizer: CharTokenizer, counts, min_count: int) -> CharTokenizer:
    """The old vocabulary, then the new text's characters it lacks (sorted), at the end."""
    new = sorted(c for c, n in counts.items() if n >= min_count and c not in tokenizer.stoi)
    chars = tokenizer.itos + new
    if len(chars) > MAX_CHAR_VOCAB:
        raise TokenizerError(f"vocabulary of {len(chars)} characters is over the limit of {MAX_CHAR_VOCAB}; "
                             f"raise --min-char-count")
    return CharTokenizer(chars, tokenizer.normalize)


def transfer_weights(model: torch.nn.Module, weights: dict) -> None:
    """Copy the source's weights into a freshly initialised model of the (possibly larger)
    vocabulary: the vocabulary-sized tensors (embedding rows, output rows and bias) copy the old
    ids' rows only, so the new ids keep the fresh model's initialisation."""
    own = model.state_dict()
    with torch.no_grad():
        for name, value in weights.items():
            target = own[name]
            if target.shape == value.shape:
                target.copy_(value)
            else:   # (V_new, ...) from (V_old, ...): the first V_old rows are the old ids
                target[:value.shape[0]].copy_(value)
