"""Reading a text the user hands a command (a prime file, a text to score, stdin) with a bound on
its length, so that no input costs more memory than the command can use. Light: nothing here
imports torch or numpy, so the command line can use it at start-up."""

from __future__ import annotations

import codecs
from typing import BinaryIO

from .errors import CorpusError


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
        try:
            text = decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise CorpusError(f"{what} is not UTF-8 text (bad byte at offset {offset + e.start:,})") from None
        chars += len(text)
        if chars > limit:
            raise CorpusError(f"{what} is longer than {limit:,} characters, the most it may be; "
                              f"give a shorter text (its last part, say)")
        parts.append(text)
        offset += len(raw)
        if not raw:
            return "".join(parts)
