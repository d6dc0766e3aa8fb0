"""Sampling: greedy and beam decoding, stop strings, length in displayed characters, whole Hangul
syllables at the end, flat memory for any prime, streamed --num-samples, and bad values refused."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import charlm  # noqa: E402
from charlm.api import LanguageModel  # noqa: E402
from charlm.cli import app  # noqa: E402
from charlm.config import ModelConfig, TrainConfig  # noqa: E402
from charlm.corpus.tokenizers import CharTokenizer, SentencePieceTokenizer  # noqa: E402
from charlm.errors import ConfigError, NumericError  # noqa: E402
from charlm.model import CharRNN  # noqa: E402
from charlm import sampling  # noqa: E402
from charlm.sampling import PRIME_CHUNK, is_dangling_jamo  # noqa: E402
from helpers import REPO, TESTS, make_text

runner = CliRunner()
CHARS = sorted(set(make_text(2000)))


def tiny_lm(chars=CHARS, seed=0, cell="gru", normalize="none", tokenizer=None) -> LanguageModel:
    """A random-weight model (sampling rules do not depend on what it learned)."""
    torch.manual_seed(seed)
    tok = tokenizer or CharTokenizer(list(chars), normalize)
    model = CharRNN(ModelConfig(cell=cell, vocab_size=tok.vocab_size, embedding_size=8, hidden_size=16)).eval()
    return LanguageModel(model, tok, None, torch.device("cpu"), Path("memory"))


def sequence_logp(lm: LanguageModel, prime: str, text: str) -> float:
    """Total log-probability of text after prime, by one forward pass (ids, <unk> excluded)."""
    ids = torch.tensor(lm.tokenizer.encode(prime + text)).unsqueeze(0)
    with torch.no_grad():
        logits, _ = lm.model(ids)
    logp = torch.log_softmax(logits[0, :, 1:].double(), dim=-1)          # the sampler never draws <unk>
    n = len(lm.tokenizer.encode(prime))
    return sum(float(logp[t - 1, ids[0, t] - 1]) for t in range(n, ids.size(1)))


# --- greedy, tiny temperatures and tiny top-p -------------------------------------------------

def test_temperature_zero_is_argmax_step_by_step():
    lm = tiny_lm()
    text = lm.sample(prime="the ", length=40, temperature=0, seed=1)
    assert text == lm.sample(prime="the ", length=40, temperature=0, seed=2)   # no randomness
    # Known answer: at each position the chosen character is the argmax of a fresh forward pass.
    for t in range(len(text)):
        ids = torch.tensor(lm.tokenizer.encode("the " + text[:t])).unsqueeze(0)
        with torch.no_grad():
            logits, _ = lm.model(ids)
        assert lm.tokenizer.itos[1 + int(logits[0, -1, 1:].argmax())] == text[t]


@pytest.mark.parametrize("option", [{"temperature": 1e-300}, {"temperature": 5e-324}, {"top_p": 1e-300},
                                    {"top_k": 1}])
def test_tiny_temperature_and_top_p_behave_as_their_limit(option):
    lm = tiny_lm()
    greedy = lm.sample(prime="the ", length=60, temperature=0)
    assert lm.sample(prime="the ", length=60, seed=3, **option) == greedy
    assert set(greedy) != {"\n"}


def test_nan_weights_are_refused_with_one_line(tmp_path):
    lm = tiny_lm()
    with torch.no_grad():
        lm.model.head.weight.fill_(float("nan"))
    with pytest.raises(NumericError, match="not finite"):
        lm.sample(length=10, seed=1)
    with pytest.raises(NumericError):
        lm.sample(length=10, beam=2)


# --- seeds and other bad values --------------------------------------------------------------

@pytest.mark.parametrize("seed", [-1, 2**64, "abc", 1.5, True])
def test_bad_seeds_are_config_errors(seed):
    with pytest.raises(ConfigError, match="--seed must be a whole number from 0 to 2\\*\\*63 - 1"):
        tiny_lm().sample(length=5, seed=seed)


def test_largest_seed_works():
    lm = tiny_lm()
    assert len(lm.sample(length=5, seed=2**63 - 1)) == 5


@pytest.mark.parametrize("kw, fragment", [
    ({"stop": [""]}, "--stop takes non-empty strings"), ({"stop": [3]}, "--stop takes non-empty strings"),
    ({"beam": 0}, "--beam must be a positive whole number"),
    ({"beam": 2, "num_samples": 2}, "drop --num-samples"), ({"temperature": -0.5}, "--temperature must be >= 0"),
])
def test_bad_sampling_options(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        tiny_lm().sample(length=5, **kw)


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_cli_bad_seed_is_one_line(tiny_run, seed):
    r = runner.invoke(app, ["sample", str(tiny_run), "--seed", seed])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "--seed must be a whole number" in r.stderr


# --- streaming --------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{}, {"prime": "the "}, {"temperature": 0}, {"beam": 2}, {"stop": "at"}])
def test_stream_yields_nonempty_strings_that_join_to_the_sample(kw):
    lm = tiny_lm()
    pieces = list(lm.stream(length=60, seed=3, **kw))
    assert pieces and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == lm.sample(length=60, seed=3, **kw)


def test_stream_batch_yields_index_and_text_per_sample():
    lm = tiny_lm()
    texts = ["", "", ""]
    for i, piece in lm.stream_batch(length=40, seed=5, num_samples=3):
        assert isinstance(piece, str) and piece
        texts[i] += piece
    assert texts == lm.sample(length=40, seed=5, num_samples=3)
    assert texts[1] == lm.sample(length=40, seed=6)


def test_stream_checks_options_before_it_is_iterated():
    with pytest.raises(ConfigError):
        tiny_lm().stream(length=-1)


# --- stop strings ----------------------------------------------------------------------------

def test_stop_string_ends_the_sample_before_it():
    lm = tiny_lm()
    for seed in range(1, 6):
        free = lm.sample(prime="the ", length=300, seed=seed)
        first = min((i for i in (free.find(s) for s in (".", "at")) if i >= 0), default=len(free))
        stopped = lm.sample(prime="the ", length=300, seed=seed, stop=[".", "at"])
        assert stopped == free[:first]
        streamed = "".join(lm.stream(prime="the ", length=300, seed=seed, stop=["at", "."]))
        assert streamed == stopped


def test_stop_never_found_gives_the_full_length():
    lm = tiny_lm()
    assert lm.sample(length=50, seed=1, stop="zzz") == lm.sample(length=50, seed=1)


# --- length in displayed characters ------------------------------------------------------------

def test_length_counts_displayed_characters_with_sentencepiece():
    lines = make_text(4000).splitlines()
    tok = SentencePieceTokenizer.train(iter(lines), "bpe", vocab_size=320)
    lm = tiny_lm(tokenizer=tok)
    for seed in range(4):
        text = lm.sample(prime="the ", length=37, seed=seed)
        assert len(text) == 37
    assert len(lm.sample(length=25, temperature=0)) == 25


def test_nfd_syllables_are_one_character_and_the_last_is_whole():
    """A random NFD model over jamo: its output is full of loose jamo, yet every sample is exactly
    --length displayed characters and the last one is never a loose jamo."""
    import unicodedata

    syllables = "오늘은날씨가좋아요정말그래요 .!"
    chars = sorted(set(unicodedata.normalize("NFD", syllables)))
    for seed in range(8):
        lm = tiny_lm(chars=chars, normalize="nfd", seed=seed)
        with torch.no_grad():   # make the lone leading consonants likely: the hard case
            for i, c in enumerate(lm.tokenizer.itos):
                if "\u1100" <= c <= "\u1112":
                    lm.model.head.bias[i] += 2.0
        for length in (1, 2, 7, 30):
            text = lm.sample(prime="오늘 ", length=length, seed=seed)
            assert len(text) == length and not is_dangling_jamo(text[-1]), (seed, length, text)


def test_korean_nfd_model_samples_120_characters_ending_on_a_syllable(korean, tmp_path):
    """The issue's case: a model trained with --normalize nfd on the Korean corpus, primed with
    '오늘 ', asked for 120 characters, seeds 1-6 (it used to give ~64 ending in a loose jamo)."""
    corpus = tmp_path / "ko.txt"
    corpus.write_text(korean.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    cfg = TrainConfig(corpus=str(corpus), out=str(tmp_path / "ko"), normalize="nfd", batch_size=4, seq_len=16,
                      warmup_steps=0, max_steps=30, eval_every=30, sample_length=0, device="cpu")
    run = charlm.train(cfg, ModelConfig(embedding_size=8, hidden_size=16))
    for seed in range(1, 7):
        r = runner.invoke(app, ["sample", str(run), "--prime", "오늘 ", "--length", "120", "--seed", str(seed)])
        assert r.exit_code == 0, r.output
        text = r.stdout[len("오늘 "):-1]
        assert len(text) == 120 and not is_dangling_jamo(text[-1]), repr(text[-5:])


# --- beam search ---------------------------------------------------------------------------

def test_beam_of_one_is_greedy():
    lm = tiny_lm()
    assert lm.sample(prime="the ", length=30, beam=1) == lm.sample(prime="the ", length=30, temperature=0)


def test_wide_beam_finds_the_most_likely_continuation():
    """Known answer: with a beam as wide as every continuation, the search is exhaustive."""
    chars = ["a", "b", "c"]
    lm = tiny_lm(chars=chars, seed=4)
    best = max(("".join(p) for p in itertools.product(chars, repeat=3)),
               key=lambda s: sequence_logp(lm, "a", s))
    assert lm.sample(prime="a", length=3, beam=27) == best


def test_beam_compares_endings_by_mean_log_probability_per_token():
    """Known answer with a stop string: hypotheses end after 1, 2 or 3 tokens; the winner is the one
    with the best log-probability per token (the stop token counted), found exhaustively here."""
    chars = ["a", "b", "."]
    for seed in range(5):
        lm = tiny_lm(chars=chars, seed=seed)
        endings = ["."] + [a + "." for a in "ab"] + ["".join(p) for p in itertools.product(chars, repeat=3)
                                                     if "." not in p[:2]]
        best = max(endings, key=lambda s: sequence_logp(lm, "a", s) / len(s))
        assert lm.sample(prime="a", length=3, beam=27, stop=".") == best.split(".")[0]


def test_beam_stops_at_a_stop_string():
    lm = tiny_lm()
    for stop in (" ", "c", "rr"):
        text = lm.sample(prime="the ", length=200, beam=3, stop=[stop])
        assert stop not in text and len(text) <= 200


# --- the prime in chunks: flat memory ------------------------------------------------------------

def test_prime_runs_in_chunks_with_the_state_carried(monkeypatch):
    lm = tiny_lm(cell="lstm")
    prime = make_text(3 * PRIME_CHUNK + 123)
    seen = []
    forward = CharRNN.forward

    def spy(self, x, state=None):
        seen.append(x.size(1))
        return forward(self, x, state)

    with torch.no_grad():
        whole, _ = lm.model(torch.tensor(lm.tokenizer.encode(prime)).unsqueeze(0))
    monkeypatch.setattr(CharRNN, "forward", spy)
    last, _ = sampling.run_prime(lm.model, sampling.prime_ids(lm.tokenizer, prime), "cpu")
    assert max(seen) == PRIME_CHUNK and sum(seen) == len(prime) and len(seen) == 4
    torch.testing.assert_close(last, whole[:, -1, :], rtol=1e-4, atol=1e-5)   # same answer as one pass


PEAK_RSS = textwrap.dedent("""
    import resource, sys, torch
    sys.path[:0] = sys.argv[2:4]
    from test_sampling import tiny_lm
    from helpers import make_text
    lm = tiny_lm()
    text = make_text(int(sys.argv[1]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lm.sample(prime=text, length=10, seed=1)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)   # MiB (Linux: KiB)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_a_long_prime_keeps_memory_flat(tmp_path):
    """A 100,000-character prime adds little to the peak memory. Measured with this script at
    300,000 characters: +387 MiB before the prime ran in chunks (it grew with the prime: 6.8 GB
    for 5 MB), +17 MiB after."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = tmp_path / "rss.py"
    script.write_text(PEAK_RSS)
    p = subprocess.run([sys.executable, str(script), "100000", str(TESTS), str(Path(__file__).parent)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    grew = float(p.stdout.split()[-1])
    assert grew < 50, f"peak RSS grew by {grew:.0f} MiB for a 100,000-character prime"


# --- several samples: one after another, each its own seed --------------------------------------

def test_sample_i_of_a_batch_is_the_single_sample_with_seed_plus_i():
    lm = tiny_lm()
    batch = lm.sample(prime="the ", length=50, seed=7, num_samples=3)
    assert batch == [lm.sample(prime="the ", length=50, seed=7 + i) for i in range(3)]
    assert len(set(batch)) == 3


def test_cli_streams_samples_one_after_another(tiny_run):
    r = runner.invoke(app, ["sample", str(tiny_run), "--prime", "the ", "--length", "30", "--seed", "4",
                            "--num-samples", "3"])
    assert r.exit_code == 0, r.output
    lm = charlm.load(tiny_run, device="cpu")
    want = "".join(f"--- sample {i + 1} of 3 (seed {4 + i}) ---\nthe {lm.sample(prime='the ', length=30, seed=4 + i)}\n"
                   for i in range(3))
    assert r.stdout == want


def test_cli_greedy_beam_and_stop(tiny_run):
    lm = charlm.load(tiny_run, device="cpu")
    r = runner.invoke(app, ["sample", str(tiny_run), "--prime", "the ", "--length", "40", "--temperature", "0"])
    assert r.exit_code == 0 and r.stdout == "the " + lm.sample(prime="the ", length=40, temperature=0) + "\n"
    r = runner.invoke(app, ["sample", str(tiny_run), "--prime", "the ", "--length", "40", "--beam", "3"])
    assert r.exit_code == 0 and r.stdout == "the " + lm.sample(prime="the ", length=40, beam=3) + "\n"
    r = runner.invoke(app, ["sample", str(tiny_run), "--length", "200", "--seed", "2", "--stop", " ", "--stop", "."])
    assert r.exit_code == 0 and r.stdout == lm.sample(length=200, seed=2, stop=[" ", "."]) + "\n"
    assert " " not in r.stdout and "." not in r.stdout


def test_help_documents_the_options():
    r = runner.invoke(app, ["sample", "--help"], env={"COLUMNS": "200"})
    for words in ("--temperature 0", "greedy", "--beam", "log-probability per token", "--stop",
                  "not printed", "displayed", "--- sample I of N (seed S) ---", "--interactive", "/top"):
        assert words in " ".join(r.stdout.split()), words


# --- evaluate --json FILE / --json - ----------------------------------------------------------

def test_evaluate_json_to_stdout_and_to_a_file(tiny_run, tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text(make_text(500), encoding="utf-8")
    r = runner.invoke(app, ["evaluate", str(tiny_run), str(corpus), "--json", "-", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)                                            # nothing else on stdout
    assert doc["schema"] == "charlm.evaluate/1" and doc["tokens"] == 499
    assert doc["bits_per_char"] == pytest.approx(doc["loss"] * 499 / doc["chars"] / math.log(2), rel=1e-6)
    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["evaluate", str(tiny_run), str(corpus), "--json", str(out), "--device", "cpu"])
    assert r.exit_code == 0 and "bits per character" in r.stdout
    assert json.loads(out.read_text()) == doc
    r = runner.invoke(app, ["evaluate", str(tiny_run), str(corpus), "--json", str(tmp_path / "no" / "x.json")])
    assert r.exit_code == 1 and "cannot write --json" in r.stderr and "Traceback" not in r.output
