"""--records: a corpus that is a list of records (names, titles, tweets, chat lines).

Records are separated by a one-character separator (a newline by default). The separator opens
the record that follows it: the state is zeroed just before the model reads a separator, so the
separator plays the part of a start-of-record token, the prediction of a record's first character
is made from a fresh state, and nothing of one record reaches the next (tests/test_records.py).
Training, evaluation and sampling all apply the same rule through ``reset_mask``; sampling starts
a record by reading the separator from a zero state and stops when the model writes it again.

Only the char tokenizer is supported: a sentencepiece model normalises newlines away and merges
pieces across a separator, so a record boundary is not one known id. A multi-character separator
is refused for the same reason (a boundary must be one token).
"""

from __future__ import annotations

from typing import Optional

import torch

from .corpus.tokenizers import CharTokenizer, Tokenizer
from .errors import ConfigError


def separator_id(records: bool, record_sep: str, tokenizer: Tokenizer) -> Optional[int]:
    """The separator's token id under --records; None without it. Raises ConfigError."""
    if not records:
        return None
    if not isinstance(tokenizer, CharTokenizer):
        raise ConfigError("--records needs --tokenizer char (a sentencepiece model merges pieces across "
                          "the separator, so a record boundary is not one token)")
    ids = tokenizer.encode(record_sep)
    if len(ids) != 1 or int(ids[0]) == 0:
        raise ConfigError(f"--record-sep {record_sep!r} is not a character of the corpus's vocabulary: "
                          f"give the character that separates the records")
    return int(ids[0])


def reset_mask(x: torch.Tensor, sep_id: Optional[int]) -> Optional[torch.Tensor]:
    """(B, T) bool: where the state is zeroed before reading x (a separator); None without --records."""
    return None if sep_id is None else x == sep_id
