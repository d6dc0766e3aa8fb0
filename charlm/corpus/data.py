"""Corpus -> token ids on disk -> TBPTT batches.

Pipeline, in the order a run uses it:
1. ``Corpus``: a text file, a folder of text files, or the built-in corpus. Text is read as UTF-8
   in blocks (a bad byte is reported with its offset), so corpora larger than RAM are fine.
2. ``scan``: first pass; counts characters (original, before normalisation) and code points, for
   the char vocabulary and the train/validation boundary.
3. ``encode_corpus``: second pass; writes the ids of the head (train) and the tail (validation,
   ``val_fraction`` of the characters, the nanoGPT convention) as numpy memmaps next to the run.
4. ``StreamBatches``: the train ids as B contiguous streams (B, L); step i is the chunk
   ``[:, i*k : (i+1)*k]`` with targets shifted by one. The caller carries the hidden state.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..errors import CorpusError, TokenizerError
from .tokenizers import PIECE_CHARS, CharTokenizer, SentencePieceTokenizer, Tokenizer, tokenizer_from_dict

BLOCK_BYTES = 8 << 20  # read 8 MiB at a time: fast, and memory stays flat for any corpus size
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".py", ".tex", ".csv", ".tsv", ".json", ".html",
                 ".htm", ".xml", ".org", ".srt", ".c", ".h", ".js", ".ts", ".go", ".rs", ".java", ""}
BUILTIN_NAME = "builtin:python-stdlib"
BUILTIN_CHARS = 1_200_000  # about as large as tiny shakespeare


@dataclass
class Corpus:
    """Where the text comes from: an ordered list of files read as one stream."""

    name: str
    files: list[Path]

    @classmethod
    def resolve(cls, spec: Optional[str]) -> "Corpus":
        """A path (file or folder), or None for the built-in corpus."""
        if spec is None or spec == BUILTIN_NAME or spec == "builtin":
            return builtin_corpus()
        path = Path(spec).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise CorpusError(f"folder {spec} holds no text files "
                                  f"(looked for {', '.join(sorted(s for s in TEXT_SUFFIXES if s))} files)")
            return cls(name=str(path), files=files)
        if not path.exists():
            from ..corpus import catalog  # a catalog name ("tinyshakespeare") wherever a path goes

            if catalog.is_known(spec):
                return cls(name=spec, files=[catalog.fetch(spec)])
            raise CorpusError(f"corpus {spec} does not exist (give a text file, a folder of text "
                              f"files, a catalog name from `charlm corpus list`, or nothing for the built-in corpus)")
        if not path.is_file():
            raise CorpusError(f"corpus {spec} is not a regular file")
        return cls(name=str(path), files=[path])

    def blocks(self, digest=None) -> Iterator[str]:
        """Yield the text in blocks, checking it is UTF-8 and not binary; ``digest`` (a hashlib
        object) gets the raw bytes, which for UTF-8 text are its encoding, without encoding again."""
        for path in self.files:
            decoder = codecs.getincrementaldecoder("utf-8")()
            offset = 0
            try:
                f = open(path, "rb")
            except PermissionError:
                raise CorpusError(f"cannot read {path}: permission denied") from None
            except OSError as e:
                raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
            with f:
                while True:
                    try:
                        raw = f.read(BLOCK_BYTES)
                    except OSError as e:  # e.g. a folder or a device given as a file
                        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
                    if digest is not None:
                        digest.update(raw)
                    # A NUL byte first: in UTF-8 it can only be U+0000, which no text holds, and
                    # it names a binary file (an image, an archive) better than a decoding error.
                    nul = raw.find(b"\x00")
                    if nul >= 0:
                        raise CorpusError(f"{path} looks like a binary file (NUL byte at byte offset "
                                          f"{offset + nul}); give a text file")
                    try:
                        text = decoder.decode(raw, final=not raw)
                    except UnicodeDecodeError as e:
                        bad = raw[e.start:e.start + 1].hex() if raw else "end of file"
                        raise CorpusError(
                            f"{path} is not UTF-8 text: invalid byte 0x{bad} at byte offset {offset + e.start} "
                            f"(convert it, e.g. `iconv -f latin1 -t utf-8`)") from None
                    if text:
                        yield text
                    offset += len(raw)
                    if not raw:
                        break

    def line_blocks(self, digest=None) -> Iterator[str]:
        """Blocks cut at line ends, so that per-block normalisation equals whole-text normalisation."""
        carry = ""
        for block in self.blocks(digest):
            block = carry + block
            cut = block.rfind("\n") + 1
            if cut == 0:
                carry = block
                continue
            carry = block[cut:]
            yield block[:cut]
        if carry:
            yield carry


def builtin_corpus() -> Corpus:
    """The standard library's own Python source: present on every Python installation, offline."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        if path.name.startswith("_"):
            continue
        files.append(path)
        total += path.stat().st_size
        if total >= BUILTIN_CHARS:
            break
    if not files:
        raise CorpusError(f"the built-in corpus needs Python's standard library sources in {stdlib}; "
                          f"pass a text file instead")
    return Corpus(name=BUILTIN_NAME, files=files)


@dataclass
class CorpusStats:
    chars: int                 # characters of the original text
    sha256: str
    counts: Counter            # code point counts after normalisation (for the char vocabulary)


def scan(corpus: Corpus, normalize: str = "none") -> CorpusStats:
    """First pass: character count, checksum, code point histogram (vectorised with bincount)."""
    from .tokenizers import normalize_text

    digest = hashlib.sha256()
    chars = 0
    hist = np.zeros(0, dtype=np.int64)
    # Counting code points does not care where a block ends, unless normalisation may join
    # characters across the cut: only then cut the blocks at line ends (a copy of each block).
    for block in corpus.blocks(digest) if normalize == "none" else corpus.line_blocks(digest):
        chars += len(block)
        block = normalize_text(block, normalize)
        # In pieces that stay in the CPU cache (see CharTokenizer.encode_compact); bincount works
        # on intp and converts other input itself, more slowly than astype does.
        for i in range(0, len(block), PIECE_CHARS):
            cps = np.frombuffer(block[i:i + PIECE_CHARS].encode("utf-32-le"), dtype="<u4")
            counts = np.bincount(cps.astype(np.intp))
            if len(counts) > len(hist):
                counts[: len(hist)] += hist
                hist = counts
            else:
                hist[: len(counts)] += counts
    if chars == 0:
        raise CorpusError(f"corpus {corpus.name} is empty")
    nonzero = np.nonzero(hist)[0]
    return CorpusStats(chars=chars, sha256=digest.hexdigest(),
                       counts=Counter({chr(int(c)): int(hist[c]) for c in nonzero}))


def build_tokenizer(corpus: Corpus, stats: CorpusStats, kind: str, vocab_size: Optional[int],
                    min_char_count: int, normalize: str) -> Tokenizer:
    if kind == "char":
        tok = CharTokenizer.from_counts(stats.counts, min_char_count, normalize)
        if tok.vocab_size > 1 << 20:
            raise TokenizerError(f"vocabulary of {tok.vocab_size} characters is over the limit "
                                 f"of {1 << 20}; raise --min-char-count")
        return tok
    if vocab_size is None:
        vocab_size = len(stats.counts) + 300 if kind == "spm-char" else 2000
    if kind != "spm-char" and vocab_size < 300:
        raise TokenizerError(f"--vocab-size {vocab_size} is too small for a {kind} tokenizer with "
                             f"byte fallback: it needs at least 300 (256 bytes plus pieces)")
    lines = (line for block in corpus.line_blocks() for line in block.split("\n"))
    return SentencePieceTokenizer.train(lines, kind, vocab_size, normalize)


def id_dtype(vocab_size: int) -> np.dtype:
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


@dataclass
class Split:
    """Token ids of one split on disk, and how many original characters they cover."""

    ids: np.ndarray  # memmap, shape (N,)
    chars: int

    @property
    def tokens(self) -> int:
        return len(self.ids)


@dataclass
class Dataset:
    train: Split
    val: Split
    tokenizer: Tokenizer
    corpus_name: str
    sha256: str
    chars: int


def encode_corpus(corpus: Corpus, stats: CorpusStats, tokenizer: Tokenizer, val_fraction: float,
                  folder: Path) -> Dataset:
    """Second pass: encode into folder/train.bin and folder/val.bin (memmaps), reused when valid."""
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    val_chars = max(1, int(round(stats.chars * val_fraction)))
    train_chars = stats.chars - val_chars
    dtype = id_dtype(tokenizer.vocab_size)
    key = {"sha256": stats.sha256, "val_chars": val_chars, "tokenizer": _tokenizer_key(tokenizer),
           "dtype": dtype.str}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == key:
                return _open_dataset(folder, meta, tokenizer, corpus, stats)
        except (OSError, ValueError):
            pass  # stale or partial cache: encode again
    if train_chars < 2:
        raise CorpusError(f"corpus {corpus.name} has {stats.chars} characters: too short to split "
                          f"into training and validation text")
    counts = {"train": 0, "val": 0}
    tmp = {s: folder / f"{s}.bin.tmp" for s in counts}
    with open(tmp["train"], "wb") as ftrain, open(tmp["val"], "wb") as fval:
        seen = 0
        # A char tokenizer encodes each code point on its own, so (unless it normalises) any block
        # boundary will do, and its ids come out already in the on-disk dtype.
        context_free = isinstance(tokenizer, CharTokenizer) and tokenizer.normalize == "none"
        encode = tokenizer.encode_compact if isinstance(tokenizer, CharTokenizer) else tokenizer.encode
        for block in corpus.blocks() if context_free else corpus.line_blocks():
            head = block[: max(0, train_chars - seen)]
            tail = block[len(head):]
            seen += len(block)
            for part, f, name in ((head, ftrain, "train"), (tail, fval, "val")):
                if part:
                    ids = encode(part).astype(dtype, copy=False)
                    f.write(ids.data)
                    counts[name] += len(ids)
    for s in counts:
        tmp[s].replace(folder / f"{s}.bin")
    meta = {"key": key, "train_tokens": counts["train"], "val_tokens": counts["val"],
            "train_chars": train_chars, "val_chars": val_chars}
    meta_path.write_text(json.dumps(meta))
    return _open_dataset(folder, meta, tokenizer, corpus, stats)


def _tokenizer_key(tokenizer: Tokenizer) -> str:
    d = tokenizer.to_dict()
    h = hashlib.sha256(repr(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in d.items())).encode())
    return h.hexdigest()


def _open_dataset(folder: Path, meta: dict, tokenizer: Tokenizer, corpus: Corpus, stats: CorpusStats) -> Dataset:
    dtype = np.dtype(meta["key"]["dtype"])

    def open_split(name: str, n: int, chars: int) -> Split:
        ids = (np.memmap(folder / f"{name}.bin", dtype=dtype, mode="r", shape=(n,))
               if n > 0 else np.zeros(0, dtype=dtype))
        return Split(ids=ids, chars=chars)

    return Dataset(train=open_split("train", meta["train_tokens"], meta["train_chars"]),
                   val=open_split("val", meta["val_tokens"], meta["val_chars"]),
                   tokenizer=tokenizer, corpus_name=corpus.name, sha256=stats.sha256, chars=stats.chars)


def prepare_dataset(corpus: Corpus, folder: Path, tokenizer_kind: str, vocab_size: Optional[int],
                    min_char_count: int, normalize: str, val_fraction: float,
                    tokenizer_dict: Optional[dict] = None) -> Dataset:
    """Scan, build (or reuse) the tokenizer, and encode. ``tokenizer_dict`` pins a resumed run's."""
    stats = scan(corpus, normalize)
    if tokenizer_dict is not None:
        tokenizer = tokenizer_from_dict(tokenizer_dict)
    else:
        tokenizer = build_tokenizer(corpus, stats, tokenizer_kind, vocab_size, min_char_count, normalize)
    return encode_corpus(corpus, stats, tokenizer, val_fraction, folder)


class StreamBatches:
    """TBPTT batches over B contiguous streams.

    The ids (N,) are cut into ``batch_size * world_size`` equal streams of length L and this rank
    takes its own ``batch_size`` of them, so each stream is read front to back exactly once per
    epoch and the hidden state carried from chunk i to chunk i+1 is the true history of chunk i+1.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1):
        streams = batch_size * world_size
        length = len(ids) // streams
        if length < seq_len + 1:
            need = streams * (seq_len + 1)
            raise CorpusError(
                f"the training text has {len(ids)} tokens, too few for {streams} streams of "
                f"--seq-len {seq_len} (needs at least {need}); lower --batch-size or --seq-len")
        grid = ids[: streams * length].reshape(streams, length)   # (B*W, L), a view of the memmap
        self.data = grid[rank * batch_size:(rank + 1) * batch_size]  # (B, L)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.stream_length = length
        self.steps_per_epoch = (length - 1) // seq_len

    def batch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk i of the epoch: inputs (B, k) and targets (B, k), the targets one step ahead."""
        k = self.seq_len
        window = np.asarray(self.data[:, i * k: (i + 1) * k + 1], dtype=np.int64)  # (B, k+1)
        return window[:, :-1], window[:, 1:]


def chars_per_token(split: Split) -> float:
    return split.chars / max(1, split.tokens)


def bits_per_char(nats: float, predicted_tokens: int, split_tokens: int, split_chars: int) -> float:
    """Total nats over the original characters those predicted tokens cover, in bits."""
    chars = split_chars * predicted_tokens / max(1, split_tokens)
    return nats / max(chars, 1e-9) / math.log(2)
