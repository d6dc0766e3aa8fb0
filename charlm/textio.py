"""Reading a text the user hands a command (a prime file, a text to score, stdin) with a bound on
its length, so that no input costs more memory than the command can use. Light: nothing here
imports torch or numpy, so the command line can use it at start-up."""

from __future__ import annotations

import codecs
from typing import BinaryIO, Optional

from .errors import CorpusError

# Byte order marks of encodings that are not UTF-8 (UTF-32's first, since UTF-32-LE's begins with
# UTF-16-LE's). A file that starts with one is text in that encoding: its ASCII characters carry
# NUL bytes, so without this check it would be called binary.
FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def foreign_encoding(head: bytes) -> Optional[str]:
    """Why the start of a file is not UTF-8 when it says so itself, with what to do:
    "UTF-16 text, not UTF-8 (convert it: iconv -f UTF-16 -t UTF-8)"; None for anything else."""
    for bom, name in FOREIGN_BOMS:
        if head.startswith(bom):
            return f"{name} text, not UTF-8 (convert it: iconv -f {name} -t UTF-8)"
    return None


def read_limited(stream: BinaryIO, limit: int, what: str) -> str:
    """The UTF-8 text of a binary stream (a file, a pipe, stdin), read in blocks, refused with one
    line as soon as it passes ``limit`` characters or holds a byte that is not UTF-8.

    A pipe that never ends (``yes |``), /dev/zero or /dev/urandom costs one block of memory, not
    everything up to an out-of-memory kill: the check comes before the next block is read."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts: list[str] = []
    chars = offset = 0
    while True:
        raw = stream.read(1 << 20)
        if offset == 0 and foreign_encoding(raw):
            raise CorpusError(f"{what} is {foreign_encoding(raw)}")
        try:
            text = decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            if not raw:   # the end: what the decoder held back is a character cut off
                raise CorpusError(f"{what} is not UTF-8 text: it ends in the middle of a character "
                                  f"(was it cut short?)") from None
            raise CorpusError(f"{what} is not UTF-8 text (bad byte at offset {offset + e.start:,})") from None
        chars += len(text)
        if chars > limit:
            raise CorpusError(f"{what} is longer than {limit:,} characters, the most it may be; "
                              f"give a shorter text (its last part, say)")
        parts.append(text)
        offset += len(raw)
        if not raw:
            return "".join(parts)
