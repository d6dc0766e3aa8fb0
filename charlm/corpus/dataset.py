"""Token ids on disk, and TBPTT batches over them.

Pipeline, in the order a run uses it (``text`` does the reading and the first pass):
1. ``build_tokenizer``: the char vocabulary from the scan's counts, or a sentencepiece model
   trained on the text; a vocabulary with nothing to learn is refused before anything is written.
2. ``encode_corpus``: second pass; writes the ids of the head (train) and the tail (validation,
   ``val_fraction`` of the characters, the nanoGPT convention) as numpy memmaps in the run's
   ``data/`` folder, with a sha256 of each id file in ``meta.json``, so a damaged file is encoded
   again rather than trained on. Reused when the corpus, tokenizer and split are unchanged.
3. ``StreamBatches``: the train ids as B contiguous streams (B, L); step i is the chunk
   ``[:, i*k : (i+1)*k]`` with targets shifted by one. The caller carries the hidden state.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CorpusError, TokenizerError
from ..util import human_bytes, open_no_follow
from .text import Corpus, CorpusStats, scan
from .tokenizers import (MAX_CHAR_VOCAB, CharTokenizer, SentencePieceTokenizer, Tokenizer, id_dtype,
                         tokenizer_from_dict)

SPLITS = ("train", "val")
HASH_BLOCK = 16 << 20  # bytes hashed at a time when checking an id file


def build_tokenizer(corpus: Corpus, stats: CorpusStats, kind: str, vocab_size: Optional[int],
                    min_char_count: int, normalize: str) -> Tokenizer:
    """The tokenizer a new run trains with; refused (one line) when it would be useless."""
    if kind == "char":
        kept = sorted(c for c, n in stats.counts.items() if n >= min_char_count)
        if len(kept) > MAX_CHAR_VOCAB:
            raise TokenizerError(f"vocabulary of {len(kept)} characters is over the limit "
                                 f"of {MAX_CHAR_VOCAB}; raise --min-char-count")
        if len(kept) < 2:  # <unk> and at most one character: the model has nothing to predict
            raise TokenizerError(_tiny_vocabulary(len(kept) + 1, len(kept), stats, min_char_count))
        return CharTokenizer(kept, normalize)
    if vocab_size is None:
        vocab_size = len(stats.counts) + 300 if kind == "spm-char" else 2000
    if kind != "spm-char" and vocab_size < 300:
        raise TokenizerError(f"--vocab-size {vocab_size} is too small for a {kind} tokenizer with "
                             f"byte fallback: it needs at least 300 (256 bytes plus pieces)")
    lines = (line for block in corpus.line_blocks() for line in block.split("\n"))
    return SentencePieceTokenizer.train(lines, kind, vocab_size, normalize)


def _tiny_vocabulary(tokens: int, kept: int, stats: CorpusStats, min_char_count: int) -> str:
    distinct = len(stats.counts)
    if distinct >= 2 and min_char_count > 1:
        top = max(stats.counts.values())
        return (f"the vocabulary would have {tokens} tokens: --min-char-count {min_char_count} keeps "
                f"{kept} of the corpus's {distinct} distinct characters, leaving nothing to learn; "
                f"lower --min-char-count (the most frequent character occurs {top:,} times)")
    return (f"the vocabulary would have {tokens} tokens: the corpus has {distinct} distinct "
            f"character{'s' if distinct != 1 else ''}, leaving nothing to learn; give a more varied text")


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


def encode_corpus(corpus: Corpus, stats: CorpusStats, tokenizer: Tokenizer, val_fraction: float,
                  folder: Path) -> Dataset:
    """Second pass: encode into folder/train.bin and folder/val.bin (memmaps), reused when valid.

    Nothing is written before the split is known to be possible; a failure part way (a full disk,
    a bad byte late in the corpus, Ctrl-C) removes the temporary files, and meta.json (the record
    that the id files are complete) is written last, atomically."""
    val_chars = max(1, int(round(stats.chars * val_fraction)))
    train_chars = stats.chars - val_chars
    if train_chars < 2:
        raise CorpusError(f"corpus {corpus.name} has {stats.chars} characters: too short to split "
                          f"into training and validation text")
    dtype = id_dtype(tokenizer.vocab_size)
    key = {"sha256": stats.sha256, "val_chars": val_chars, "tokenizer": _tokenizer_key(tokenizer),
           "dtype": dtype.str}
    meta = _reusable_meta(folder, key)
    if meta is None:
        meta = _encode(corpus, stats, tokenizer, train_chars, val_chars, folder, key)
    return _open_dataset(folder, meta, tokenizer, corpus, stats)


def _encode(corpus: Corpus, stats: CorpusStats, tokenizer: Tokenizer, train_chars: int,
            val_chars: int, folder: Path, key: dict) -> dict:
    """Write both id files through temporary files; return the meta.json record written last."""
    dtype = np.dtype(key["dtype"])
    tmp = {s: folder / f"{s}.bin.tmp" for s in SPLITS}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)  # the old record no longer holds
        counts, digests = _write_ids(corpus, tokenizer, train_chars, dtype, tmp)
        for s in SPLITS:
            tmp[s].replace(folder / f"{s}.bin")
        meta = {"key": key, "train_tokens": counts["train"], "val_tokens": counts["val"],
                "train_chars": train_chars, "val_chars": val_chars,
                "train_ids_sha256": digests["train"], "val_ids_sha256": digests["val"]}
        meta_tmp = folder / "meta.json.tmp"
        with open_no_follow(meta_tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(meta))
        os.replace(meta_tmp, folder / "meta.json")
        return meta
    except OSError as e:
        need = sum(stats.counts.values()) * dtype.itemsize
        raise CorpusError(f"cannot write the encoded corpus to {folder}: {e.strerror or e} (it needs "
                          f"about {human_bytes(need)}); nothing was kept") from None
    finally:
        for path in (*tmp.values(), folder / "meta.json.tmp"):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass


def _write_ids(corpus: Corpus, tokenizer: Tokenizer, train_chars: int, dtype: np.dtype,
               tmp: dict[str, Path]) -> tuple[dict[str, int], dict[str, str]]:
    """Encode the corpus block by block into the two temporary files; token counts and sha256s."""
    counts = {s: 0 for s in SPLITS}
    digests = {s: hashlib.sha256() for s in SPLITS}
    # Not through a link: a train.bin.tmp planted as a link must not make charlm write elsewhere.
    with open_no_follow(tmp["train"], "wb") as ftrain, open_no_follow(tmp["val"], "wb") as fval:
        files = {"train": ftrain, "val": fval}
        seen = 0
        # A char tokenizer encodes each code point on its own, so (unless it normalises) any block
        # boundary will do, and its ids come out already in the on-disk dtype.
        context_free = isinstance(tokenizer, CharTokenizer) and tokenizer.normalize == "none"
        encode = tokenizer.encode_compact if isinstance(tokenizer, CharTokenizer) else tokenizer.encode
        for block in corpus.blocks() if context_free else corpus.line_blocks():
            head = block[: max(0, train_chars - seen)]
            parts = {"train": head, "val": block[len(head):]}
            seen += len(block)
            for s, part in parts.items():
                if part:
                    ids = encode(part).astype(dtype, copy=False)
                    files[s].write(ids.data)
                    digests[s].update(ids.data)
                    counts[s] += len(ids)
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())  # a full disk can show only here, on some file systems
    return counts, {s: d.hexdigest() for s, d in digests.items()}


def _tokenizer_key(tokenizer: Tokenizer) -> str:
    d = tokenizer.to_dict()
    h = hashlib.sha256(repr(sorted((k, v if not isinstance(v, list) else tuple(v)) for k, v in d.items())).encode())
    return h.hexdigest()


def _reusable_meta(folder: Path, key: dict) -> Optional[dict]:
    """meta.json when it describes this corpus, tokenizer and split, and both id files are intact
    (their size and sha256 as recorded); None means encode again. The id files are charlm's own
    derived data, so encoding again is always safe."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        itemsize = np.dtype(key["dtype"]).itemsize
        for s in SPLITS:
            path = folder / f"{s}.bin"
            tokens, recorded = meta[f"{s}_tokens"], meta.get(f"{s}_ids_sha256")
            if (not isinstance(tokens, int) or not isinstance(meta[f"{s}_chars"], int)
                    or path.stat().st_size != tokens * itemsize or recorded != _file_sha256(path)):
                return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, stale, partial or damaged: encode again


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _open_dataset(folder: Path, meta: dict, tokenizer: Tokenizer, corpus: Corpus, stats: CorpusStats) -> Dataset:
    dtype = np.dtype(meta["key"]["dtype"])

    def open_split(name: str, n: int, chars: int) -> Split:
        ids = (np.memmap(folder / f"{name}.bin", dtype=dtype, mode="r", shape=(n,))
               if n > 0 else np.zeros(0, dtype=dtype))
        return Split(ids=ids, chars=chars)

    return Dataset(train=open_split("train", meta["train_tokens"], meta["train_chars"]),
                   val=open_split("val", meta["val_tokens"], meta["val_chars"]),
                   tokenizer=tokenizer, corpus_name=corpus.name, sha256=stats.sha256, chars=stats.chars)


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
