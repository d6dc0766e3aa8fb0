"""Tokenizers: text <-> integer ids.

Two families share one small protocol (``encode``, ``decode``, ``vocab_size``, ``to_dict``):
- ``CharTokenizer``: one id per Unicode code point (after optional NFC/NFD normalisation), with an
  ``<unk>`` id 0 for characters rarer than ``min_char_count`` or never seen. Encoding is vectorised
  through a code-point lookup table, not a Python loop per character.
- ``SentencePieceTokenizer``: a sentencepiece model ('char', 'bpe' or 'unigram') trained on the
  corpus with byte fallback, so any text round-trips; its serialized model travels in the checkpoint.

Both are rebuilt from ``to_dict()`` alone, which holds only str/int/bytes/list values so that a
checkpoint stays loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import sys
import unicodedata
from collections import Counter
from typing import Iterable, Iterator, Optional, Protocol

import numpy as np
import sentencepiece as spm

from ..errors import TokenizerError

UNK = "<unk>"
UNK_DISPLAY = "\ufffd"  # what an <unk> id decodes to
PIECE_CHARS = 1 << 16  # characters converted at a time when encoding a block of text (see encode_compact)
NORMALIZE_FORMS = ("none", "nfc", "nfd")
SPM_KINDS = ("spm-char", "bpe", "unigram")
MAX_CHAR_VOCAB = 1 << 20  # a char vocabulary beyond this is a softmax no one can train


class Tokenizer(Protocol):
    kind: str
    normalize: str

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str) -> np.ndarray: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def unknown_chars(self, text: str) -> list[str]: ...
    def to_dict(self) -> dict: ...


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id: what the id arrays on disk use."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def normalize_text(text: str, form: str) -> str:
    if form == "none":
        return text
    return unicodedata.normalize(form.upper(), text)


def for_display(text: str, form: str) -> str:
    """Text as a person should see it: NFD jamo are recomposed into syllables."""
    return unicodedata.normalize("NFC", text) if form == "nfd" else text


class CharTokenizer:
    """One id per code point; id 0 is <unk>."""

    kind = "char"

    def __init__(self, chars: list[str], normalize: str = "none"):
        if not chars or chars[0] != UNK:
            chars = [UNK] + [c for c in chars if c != UNK]
        self.itos = list(chars)
        self.normalize = normalize
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        # A lookup table over every code point (unknown ones -> 0) in the smallest dtype that holds
        # the ids, the one the on-disk id array uses: encoding is one numpy gather with no bounds
        # test (1-4 MB, allocated lazily as zeros).
        n = len(self.itos)
        self.id_dtype = id_dtype(n)
        self._lut = np.zeros(sys.maxunicode + 1, dtype=self.id_dtype)
        self._lut[[ord(c) for c in self.itos[1:]]] = np.arange(1, n)
        self._decode_table = self.itos.copy()
        self._decode_table[0] = UNK_DISPLAY

    @classmethod
    def from_counts(cls, counts: Counter, min_count: int = 1, normalize: str = "none") -> "CharTokenizer":
        chars = sorted(c for c, n in counts.items() if n >= min_count)
        return cls(chars, normalize)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> np.ndarray:
        return self.encode_compact(text).astype(np.int64)

    def encode_compact(self, text: str) -> np.ndarray:
        """Ids in ``id_dtype`` (uint8/16/32), as the corpus encoder writes them to disk."""
        text = normalize_text(text, self.normalize)
        ids = np.empty(len(text), dtype=self.id_dtype)
        # In pieces whose code points (4 bytes each) and intp indices (8) stay in the CPU cache:
        # twice as fast as whole 8 MiB blocks on a busy machine, where memory bandwidth is scarce.
        for i in range(0, len(text), PIECE_CHARS):
            cps = np.frombuffer(text[i:i + PIECE_CHARS].encode("utf-32-le"), dtype="<u4")
            np.take(self._lut, cps.astype(np.intp), out=ids[i:i + PIECE_CHARS], mode="clip")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        table = self._decode_table
        return "".join(table[int(i)] for i in ids)

    def unknown_chars(self, text: str) -> list[str]:
        text = normalize_text(text, self.normalize)
        return sorted({c for c in text if c not in self.stoi})

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.itos, "normalize": self.normalize}


class SentencePieceTokenizer:
    """A sentencepiece model trained on the corpus; byte fallback keeps any text encodable."""

    def __init__(self, model_proto: bytes, kind: str, normalize: str = "none"):
        self.kind = kind
        self.normalize = normalize
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)

    @classmethod
    def train(cls, lines: Iterator[str], kind: str, vocab_size: int, normalize: str = "none",
              max_lines: int = 2_000_000) -> "SentencePieceTokenizer":
        model_type = {"spm-char": "char", "bpe": "bpe", "unigram": "unigram"}[kind]
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=(normalize_text(line, normalize) for line in lines if line.strip()),
                model_writer=buf,
                model_type=model_type,
                vocab_size=vocab_size,
                hard_vocab_limit=model_type != "char",
                byte_fallback=True,                 # unseen characters become bytes, never <unk>
                character_coverage=0.9995 if model_type != "char" else 1.0,
                normalization_rule_name="identity",  # keep the text exactly as written
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                user_defined_symbols=["\n"],       # newlines are tokens too
                input_sentence_size=max_lines,
                shuffle_input_sentence=True,
                max_sentence_length=1 << 16,
                num_threads=2,
                minloglevel=2,
            )
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
            msg = msg.split("] ")[-1]  # drop sentencepiece's source location
            raise TokenizerError(f"sentencepiece could not train a {kind} tokenizer with "
                                 f"vocab size {vocab_size}: {msg} (try a smaller --vocab-size)") from None
        return cls(buf.getvalue(), kind, normalize)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.sp.encode(normalize_text(text, self.normalize)), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def unknown_chars(self, text: str) -> list[str]:
        return []  # byte fallback: every character has an encoding

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model_proto": self.model_proto, "normalize": self.normalize}


def tokenizer_from_dict(d: dict, vocab_size: Optional[int] = None) -> Tokenizer:
    """Rebuild a tokenizer from ``to_dict()``, checking it first: a checkpoint may be damaged or
    edited, so every field is validated and any fault is one TokenizerError line. ``vocab_size``
    (the model's) must then match the tokenizer's, or sampling would yield ids it cannot decode."""
    if not isinstance(d, dict):
        raise TokenizerError(f"the checkpoint's tokenizer is a {type(d).__name__}, not a dictionary")
    kind = d.get("kind")
    normalize = d.get("normalize", "none")
    if not isinstance(normalize, str) or normalize not in NORMALIZE_FORMS:
        raise TokenizerError(f"the checkpoint's tokenizer has normalize={_short(normalize)}; "
                             f"expected one of {', '.join(NORMALIZE_FORMS)}")
    if kind == "char":
        tokenizer: Tokenizer = CharTokenizer(_checked_chars(d.get("chars")), normalize)
    elif kind in SPM_KINDS:
        tokenizer = _checked_sentencepiece(d.get("model_proto"), kind, normalize)
    else:
        raise TokenizerError(f"unknown tokenizer kind {_short(kind)} in the checkpoint "
                             f"(known: char, {', '.join(SPM_KINDS)})")
    if vocab_size is not None and tokenizer.vocab_size != vocab_size:
        raise TokenizerError(f"the checkpoint's tokenizer has {tokenizer.vocab_size} tokens but its "
                             f"model has {vocab_size}: the checkpoint is inconsistent")
    return tokenizer


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _checked_chars(chars: object) -> list[str]:
    """A char vocabulary as to_dict wrote it: <unk> first, then distinct single code points."""
    if not isinstance(chars, (list, tuple)) or not chars:
        raise TokenizerError(f"the checkpoint's char tokenizer has no list of characters "
                             f"(got {type(chars).__name__})")
    if chars[0] != UNK:
        raise TokenizerError(f"the checkpoint's char vocabulary does not start with {UNK}")
    if len(chars) > MAX_CHAR_VOCAB + 1:
        raise TokenizerError(f"the checkpoint's char vocabulary has {len(chars)} entries, over the "
                             f"limit of {MAX_CHAR_VOCAB}")
    for c in chars[1:]:
        if not isinstance(c, str) or len(c) != 1:
            raise TokenizerError(f"the checkpoint's char vocabulary holds {_short(c)}, not a single character")
        if "\ud800" <= c <= "\udfff":  # a lone surrogate is not a character and has no UTF-8 form
            raise TokenizerError(f"the checkpoint's char vocabulary holds the surrogate code point "
                                 f"U+{ord(c):04X}, which is not a character")
    if len(set(chars)) != len(chars):
        raise TokenizerError("the checkpoint's char vocabulary lists a character twice")
    return list(chars)


def _checked_sentencepiece(proto: object, kind: str, normalize: str) -> "SentencePieceTokenizer":
    if not isinstance(proto, (bytes, bytearray)) or not proto:
        raise TokenizerError(f"the checkpoint's {kind} tokenizer has no sentencepiece model "
                             f"(got {type(proto).__name__})")
    try:
        return SentencePieceTokenizer(bytes(proto), kind, normalize)
    except Exception as e:  # sentencepiece raises RuntimeError (or others) on a damaged model
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise TokenizerError(f"the checkpoint's sentencepiece model cannot be loaded: {msg[:120]}") from None


class StreamDecoder:
    """Turns ids into display text one id at a time, without re-decoding the whole output.

    Sentencepiece pieces and NFD jamo only make sense in context, so the decoder holds back the
    tail that may still change and releases text once it is settled.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.pending: list[int] = []
        self.context: list[int] = []
        self.held = ""  # decoded text not yet released (may still recompose)
        # A char tokenizer maps one id to one settled character (bar NFD jamo): a table lookup.
        self.table = tokenizer._decode_table if isinstance(tokenizer, CharTokenizer) else None
        self.direct = self.table is not None and tokenizer.normalize != "nfd"

    def push(self, token_id: int) -> str:
        if self.direct:
            return self.table[token_id]
        if self.table is not None:
            text = self.table[token_id]
        else:
            self.pending.append(token_id)
            # Decode with a little context so a leading-space piece keeps its space.
            before = self.tok.decode(self.context)
            full = self.tok.decode(self.context + self.pending)
            if not full.startswith(before) or full.endswith("\ufffd"):
                return ""  # an incomplete byte sequence: wait for the next piece
            text = full[len(before):]
            self.context = (self.context + self.pending)[-8:]
            self.pending = []
        return self._release(text)

    def _release(self, text: str) -> str:
        if self.tok.normalize != "nfd":
            return text
        self.held += text
        # Release everything before the last starter (a character that begins a new cluster).
        cut = len(self.held)
        while cut > 0 and not _is_starter(self.held[cut - 1]):
            cut -= 1
        cut = max(cut - 1, 0)
        out, self.held = self.held[:cut], self.held[cut:]
        return unicodedata.normalize("NFC", out)

    def peek(self) -> str:
        """The display text still held back, as ``flush`` would give it now (nothing changes)."""
        if self.direct:
            return ""
        tail = ""
        if self.pending:
            tail = self.tok.decode(self.context + self.pending)[len(self.tok.decode(self.context)):]
        if self.tok.normalize != "nfd":
            return tail
        return unicodedata.normalize("NFC", self.held + tail)

    def copy(self) -> "StreamDecoder":
        """An independent decoder in the same state (beam search forks hypotheses)."""
        twin = object.__new__(StreamDecoder)
        twin.__dict__.update(self.__dict__)
        twin.pending, twin.context = list(self.pending), list(self.context)
        return twin

    def flush(self) -> str:
        tail = ""
        if self.pending:
            tail = self.tok.decode(self.context + self.pending)[len(self.tok.decode(self.context)):]
            self.pending = []
        out = self._release(tail) if tail else ""
        out += unicodedata.normalize("NFC", self.held) if self.tok.normalize == "nfd" else ""
        self.held = ""
        return out


def _is_starter(ch: str) -> bool:
    # Hangul medial vowels and final consonants (conjoining jamo) attach to the syllable before.
    if "\u1160" <= ch <= "\u11ff" or "\ud7b0" <= ch <= "\ud7ff":
        return False
    return unicodedata.combining(ch) == 0
