"""Every text a user hands a command is read with a bound: a prime file, a text to score, stdin.
A stream that never ends (`yes |`, /dev/zero) is refused after one block, not read until the
machine runs out of memory; a byte that is not UTF-8 stops the read where it is."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import charlm
from charlm.cli import app
from charlm.config import MAX_PRIME_CHARS, MAX_SCORE_CHARS, SampleConfig
from charlm.errors import CharLMError, ConfigError, CorpusError
from charlm.textio import read_limited
from helpers import REPO


class Endless(io.RawIOBase):
    """A stream that never ends, counting the bytes it hands out."""

    def __init__(self, chunk: bytes):
        self.chunk, self.given = chunk, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = (self.chunk * (n // len(self.chunk) + 1))[:n]
        self.given += len(out)
        return out


@pytest.mark.parametrize("chunk", [b"y\n", b"\0", "가".encode()])
def test_an_endless_stream_is_refused_after_about_the_limit(chunk):
    stream = Endless(chunk)
    with pytest.raises(CorpusError, match="longer than 1,000 characters"):
        read_limited(stream, 1000, "the text")
    assert stream.given <= 2 << 20          # one block past the limit at most, never the stream


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_any_text_within_the_limit_comes_back_whole(text):
    assert read_limited(io.BytesIO(text.encode("utf-8")), 300, "x") == text


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=50), st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]),
       st.text(max_size=50))
def test_a_byte_that_is_not_utf8_is_one_line_naming_its_offset(before, bad, after):
    data = before.encode("utf-8") + bad + after.encode("utf-8")
    with pytest.raises(CorpusError, match=f"bad byte at offset {len(before.encode('utf-8')):,}"):
        read_limited(io.BytesIO(data), 10_000, "the text")


def test_the_api_bounds_a_prime_and_a_scored_text(tiny_run):
    with pytest.raises(ConfigError, match="give its last part"):
        SampleConfig(prime="a" * (MAX_PRIME_CHARS + 1)).validate()
    lm = charlm.load(tiny_run, device="cpu")
    with pytest.raises(ConfigError, match="charlm evaluate"):
        lm.score("a" * (MAX_SCORE_CHARS + 1))


runner = CliRunner()


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero and /dev/urandom")
@pytest.mark.parametrize("device, message", [("/dev/zero", "longer than"), ("/dev/urandom", "not UTF-8")])
def test_a_device_as_the_prime_or_the_text_is_one_line(tiny_run, device, message):
    for args in (["sample", str(tiny_run), "--prime-file", device], ["score", str(tiny_run), "--file", device]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output


def test_an_endless_stdin_to_score_stops_at_the_bound(tiny_run):
    """`yes | charlm score RUN -` ends with one line, having read about a megabyte."""
    yes = subprocess.Popen(["yes", "the cat sat"], stdout=subprocess.PIPE)
    try:
        p = subprocess.run([sys.executable, "-m", "charlm", "score", str(tiny_run), "-"], stdin=yes.stdout,
                           capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        yes.kill()
    assert p.returncode == 1 and f"longer than {MAX_SCORE_CHARS:,} characters" in p.stderr and p.stdout == "", p.stderr


@pytest.mark.slow
def test_the_bounded_inputs_stay_within_a_memory_limit(tiny_run):
    """Peak resident memory of each refused input stays far below what reading it whole took
    (6-12 GB before): under 1.5 GB, torch included."""
    cases = [["sample", str(tiny_run), "--prime-file", "/dev/zero"],
             ["score", str(tiny_run), "--file", "/dev/zero"],
             ["sample", str(tiny_run), "--prime-file", "/dev/urandom"]]
    for args in cases:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        p = subprocess.run([sys.executable, "-m", "charlm", *args], capture_output=True, text=True,
                           timeout=300, cwd=REPO)
        peak_mib = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        assert p.returncode == 1, p.stderr
        assert peak_mib < 1536, f"{args}: peak RSS {peak_mib:.0f} MiB"
