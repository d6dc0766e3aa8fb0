"""Where the text comes from, and the first pass over it.

- ``Corpus``: a text file, a folder of text files, a catalog name, or the built-in corpus. Text is
  read as UTF-8 in blocks (a bad byte is reported with its file and byte offset), so corpora
  larger than RAM are fine. A folder skips binary files (named in ``Corpus.skipped``), hidden
  files and folders, and charlm's own run folders, so a run kept inside its corpus folder is never
  read back as text.
- ``scan``: counts characters (original, before normalisation) and code points, for the char
  vocabulary and the train/validation boundary, and hashes the bytes (the run's corpus identity).

Imports: tokenizers (normalisation) and catalog (names), neither of which imports this module.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import stat
import sysconfig
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..errors import CorpusError
from ..textio import foreign_encoding
from ..util import RUN_MARKER
from . import catalog
from .tokenizers import PIECE_CHARS, normalize_text

BLOCK_BYTES = 8 << 20  # read 8 MiB at a time: fast, and memory stays flat for any corpus size
SNIFF_BYTES = 64 << 10  # how much of each file in a folder is looked at to tell text from binary
TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".py", ".tex", ".csv", ".tsv", ".json", ".html",
                 ".htm", ".xml", ".org", ".srt", ".c", ".h", ".js", ".ts", ".go", ".rs", ".java", ""}
BUILTIN_NAME = "builtin:python-stdlib"
BUILTIN_CHARS = 1_200_000  # about as large as tiny shakespeare


@dataclass
class Corpus:
    """An ordered list of files read as one stream, and the binary files a folder skipped."""

    name: str
    files: list[Path]
    skipped: list[Path] = field(default_factory=list)  # a folder's binary or non-UTF-8 files, left out

    @classmethod
    def resolve(cls, spec: Optional[str]) -> "Corpus":
        """A path (file or folder), a catalog name, or None for the built-in corpus."""
        if spec is None or spec in (BUILTIN_NAME, "builtin"):
            return builtin_corpus()
        spec = os.fspath(spec)  # a pathlib.Path from a library caller is fine too
        if not spec.strip():
            raise CorpusError("the corpus path is empty; give a text file, a folder of text files, "
                              "a catalog name, or nothing for the built-in corpus")
        path = Path(spec).expanduser()
        kind = _path_kind(path, spec)
        if kind == "folder":
            return folder_corpus(path, spec)
        if kind == "missing":
            if catalog.is_known(spec):  # a catalog name ("tinyshakespeare") wherever a path goes
                return cls(name=spec, files=[catalog.fetch(spec)])
            raise CorpusError(f"corpus {spec} does not exist (give a text file, a folder of text "
                              f"files, a catalog name from `charlm corpus list`, or nothing for the built-in corpus)")
        if kind != "file":
            raise CorpusError(f"corpus {spec} is not a regular file")
        return cls(name=str(path), files=[path])

    def blocks(self, digest=None) -> Iterator[str]:
        """Yield the text in blocks, checking it is UTF-8 and not binary; ``digest`` (a hashlib
        object) gets the raw bytes, which for UTF-8 text are its encoding, without encoding again."""
        for path in self.files:
            yield from _file_blocks(path, digest)

    def text(self, tail: Optional[float] = None) -> str:
        """The whole text, or only its last ``tail`` fraction of characters (the validation split,
        as `evaluate --tail` reads it). For a tail the text is read twice, once to count, so that
        memory holds the tail alone, not the whole corpus."""
        if tail is None:
            return "".join(self.blocks())
        total = sum(len(block) for block in self.blocks())
        skip = total - int(round(total * tail))
        kept = []
        for block in self.blocks():
            if skip >= len(block):
                skip -= len(block)
                continue
            kept.append(block[skip:])
            skip = 0
        return "".join(kept)

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


def _path_kind(path: Path, spec: str) -> str:
    """'folder', 'file', 'missing' or 'other'; an unusable path (too long, a NUL) is one line."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except PermissionError:
        raise CorpusError(f"cannot read corpus {spec}: permission denied") from None
    except OSError as e:  # a name too long for the file system, a symlink loop, ...
        raise CorpusError(f"cannot use corpus path {spec}: {e.strerror or e}") from None
    except ValueError:  # a NUL byte in the path
        raise CorpusError(f"corpus path {spec!r} is not a valid path") from None
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


def _file_blocks(path: Path, digest=None) -> Iterator[str]:
    """One file's text in blocks; a NUL byte or a non-UTF-8 byte is a CorpusError with its offset."""
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
            if offset == 0 and foreign_encoding(raw):   # UTF-16 text has NUL bytes: not binary
                raise CorpusError(f"{path} is {foreign_encoding(raw)}")
            # A NUL byte first: in UTF-8 it can only be U+0000, which no text holds, and it
            # names a binary file (an image, an archive) better than a decoding error.
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise CorpusError(f"{path} looks like a binary file (NUL byte at byte offset "
                                  f"{offset + nul}); give a text file")
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                if not raw:   # the end: the bytes the decoder held back are a character cut off
                    raise CorpusError(f"{path} is not UTF-8 text: it ends in the middle of a character, "
                                      f"at byte offset {offset - len(decoder.getstate()[0])} (was it "
                                      f"cut short?)") from None
                raise CorpusError(
                    f"{path} is not UTF-8 text: invalid byte 0x{raw[e.start:e.start + 1].hex()} at byte "
                    f"offset {offset + e.start} (convert it, e.g. `iconv -f latin1 -t utf-8`)") from None
            if text:
                yield text
            offset += len(raw)
            if not raw:
                break


# ----------------------------------------------------------------------------------------------
# Folders: text files only, never binaries or charlm's own runs.

def is_run_folder(folder: Path) -> bool:
    """A charlm run directory: its marker, or (runs from before markers) a checkpoint or a
    metrics log next to the encoded corpus's data/meta.json."""
    if (folder / RUN_MARKER).exists():
        return True
    return (folder / "data" / "meta.json").is_file() and any(
        (folder / name).is_file() for name in ("last.pt", "best.pt", "metrics.jsonl"))


def binary_reason(path: Path) -> Optional[str]:
    """Why a folder's file is not text (a NUL byte, or a byte that is not UTF-8, in its first
    SNIFF_BYTES: a compiled tool, an image, a Latin-1 file), or None when it looks like text."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
            whole = len(head) < SNIFF_BYTES
    except PermissionError:
        raise CorpusError(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
    if foreign_encoding(head):
        return foreign_encoding(head)
    nul = head.find(b"\x00")
    if nul >= 0:
        return f"NUL byte at byte offset {nul}"
    try:
        # A multi-byte character cut at the end of the sample is fine; a bad byte before it is not.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            return "not UTF-8: it ends in the middle of a character"
        return f"not UTF-8: invalid byte 0x{head[e.start:e.start + 1].hex()} at byte offset {e.start}"
    return None


def folder_corpus(root: Path, spec: str) -> Corpus:
    """The text files under root, sorted by path, skipping hidden names, run folders and binaries."""
    if is_run_folder(root):
        raise CorpusError(f"{spec} is a charlm run directory, not a corpus; give the text it was "
                          f"trained on")
    candidates = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # Prune in place so os.walk does not descend: hidden folders and charlm's own runs.
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not is_run_folder(here / d)]
        candidates += [here / name for name in filenames
                       if not name.startswith(".") and Path(name).suffix.lower() in TEXT_SUFFIXES]
    files, skipped, first_reason = [], [], None
    for path in sorted(candidates):
        if not path.is_file():  # a FIFO, a socket, a dangling link
            continue
        reason = binary_reason(path)
        if reason is None:
            files.append(path)
            continue
        skipped.append(path)
        first_reason = first_reason or f"{path}: {reason}"
    if not files:
        why = (f"; skipped {len(skipped)} binary or non-UTF-8 file{'s' if len(skipped) != 1 else ''}, "
               f"e.g. {first_reason}" if skipped else "")
        raise CorpusError(f"folder {spec} holds no text files (looked for "
                          f"{', '.join(sorted(s for s in TEXT_SUFFIXES if s))} files{why})")
    return Corpus(name=str(root), files=files, skipped=skipped)


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


# ----------------------------------------------------------------------------------------------
# The first pass.

@dataclass
class CorpusStats:
    chars: int                 # characters of the original text
    sha256: str
    counts: Counter            # code point counts after normalisation (for the char vocabulary)


def scan(corpus: Corpus, normalize: str = "none") -> CorpusStats:
    """First pass: character count, checksum, code point histogram (vectorised with bincount)."""
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
