"""`charlm score` / lm.score: per-character surprisal that adds up to what `evaluate` reports.

Known answers come from a model whose output layer ignores the state (zero weights) and whose
bias fixes the next-token distribution, so every token's bits are known in advance.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import unicodedata
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charlm.api import LanguageModel
from charlm.checkpoint import save_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig
from charlm.corpus.tokenizers import CharTokenizer, SentencePieceTokenizer
from charlm.model import CharRNN
from charlm.scoring import token_predictions
from helpers import REPO, make_text

runner = CliRunner()
CPU = torch.device("cpu")


def random_model(vocab_size: int, cell: str = "gru", seed: int = 0, scale: float = 0.3) -> CharRNN:
    """A model with weights large enough that its predictions depend on the history."""
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(cell=cell, vocab_size=vocab_size, embedding_size=8, hidden_size=16).validate())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, scale)
    return model.eval()


def fixed_model(tokenizer, probs: dict[str, float]) -> CharRNN:
    """Predicts the same distribution everywhere: probs for the named tokens, 0 for the rest."""
    V = tokenizer.vocab_size
    p = torch.zeros(V, dtype=torch.float64)
    for token, q in probs.items():
        p[tokenizer.stoi[token]] = q
    model = random_model(V)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(p.log().float())
    return model


def lm_of(model: CharRNN, tokenizer) -> LanguageModel:
    return LanguageModel(model, tokenizer, None, CPU, Path("memory"))


def write_checkpoint(path: Path, model: CharRNN, tokenizer) -> Path:
    save_checkpoint({"model_config": asdict(model.config), "model": model.state_dict(),
                     "tokenizer": tokenizer.to_dict()}, path)
    return path


def test_known_bits_per_character_and_top_guesses():
    tok = CharTokenizer(list("abc\n"))
    lm = lm_of(fixed_model(tok, {"a": 0.5, "b": 0.25, "c": 0.125, "\n": 0.125}), tok)
    r = lm.score("abca\nb", top=2)
    assert r.bits[0] is None and r.top[0] is None                # the first character: no prediction
    assert r.bits[1:] == pytest.approx([2.0, 3.0, 1.0, 3.0, 2.0], abs=1e-5)
    assert r.total_bits == pytest.approx(11.0, abs=1e-5)
    assert r.bits_per_char == pytest.approx(11.0 / 5, abs=1e-6)  # every character but the first
    assert [s for s, _ in r.top[3]] == ["a", "b"] and r.top[3][0][1] == pytest.approx(0.5, abs=1e-6)
    assert [s for s, _ in r.next] == ["a", "b"]


def test_an_nfd_syllable_costs_the_sum_of_its_jamo():
    """Under NFD a syllable is several tokens; its surprisal is their sum (the chain rule)."""
    text = "가나 가"
    jamo = sorted(set(unicodedata.normalize("NFD", text)))
    tok = CharTokenizer(jamo, normalize="nfd")
    g, n, a = "\u1100", "\u1102", "\u1161"   # choseong kiyeok, choseong nieun, jungseong a
    lm = lm_of(fixed_model(tok, {g: 0.5, a: 0.25, n: 0.125, " ": 0.125}), tok)
    r = lm.score(text)
    assert r.tokens == 7
    # 가: its first jamo is the text's first token, only its vowel is predicted (2 bits).
    assert r.bits == pytest.approx([2.0, 3.0 + 2.0, 3.0, 1.0 + 2.0], abs=1e-5)   # 가 나 ' ' 가
    assert r.top[0] is None and r.top[1][0][0] == g
    assert sum(r.bits) == pytest.approx(r.total_bits, abs=1e-9)
    assert r.bits_per_char == pytest.approx(lm.evaluate(text).bits_per_char, abs=1e-6)


@pytest.fixture(scope="module")
def bpe():
    return SentencePieceTokenizer.train(iter(make_text(6000).splitlines(True)), "bpe", 300)


def test_scoring_a_sentencepiece_model_needs_no_protobuf(bpe, monkeypatch):
    """protobuf is not a dependency of charlm: a base install must score sentencepiece models."""
    import sys

    import sentencepiece

    for name in [m for m in sys.modules if m == "google" or m.startswith("google.")] + ["sentencepiece.sentencepiece_pb2"]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "google", None)                     # `import google...` fails
    monkeypatch.setattr(sentencepiece, "_protobuf_loaded", False, raising=False)
    text = "the cat é sat"
    r = lm_of(random_model(bpe.vocab_size), bpe).score(text)
    assert len(r.bits) == len(text) and r.bits[text.index("é")] is not None


def test_a_piece_splits_its_bits_over_its_characters(bpe):
    """A multi-character piece's bits are shared evenly; the bytes of a character the pieces lack
    (byte fallback) all count for that character."""
    text = "the cat é sat"
    lm = lm_of(random_model(bpe.vocab_size), bpe)
    r = lm.score(text)
    ids = bpe.encode(text)
    bits, _, _ = token_predictions(lm.model, ids, CPU, top=0)
    pieces = bpe.sp.encode(text, out_type=str)
    assert " cat" in "".join(pieces).replace("\u2581", " ")
    at = text.index(" cat")
    k = [p.replace("\u2581", " ") for p in pieces].index(" cat")
    assert r.bits[at:at + 4] == pytest.approx([bits[k - 1] / 4] * 4, rel=1e-9)
    e = text.index("é")
    bytes_of_e = [i for i, p in enumerate(pieces) if p in ("<0xC3>", "<0xA9>")]
    assert len(bytes_of_e) == 2
    assert r.bits[e] == pytest.approx(sum(bits[i - 1] for i in bytes_of_e), rel=1e-9)
    assert r.top[e] is not None                                    # the first byte piece's guesses
    assert sum(b for b in r.bits if b is not None) == pytest.approx(r.total_bits, rel=1e-9)


@pytest.mark.parametrize("kind", ["char", "nfd", "bpe"])
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_mean_bits_per_char_is_evaluates_figure(kind, cell, bpe, korean_text):
    text = {"char": make_text(150, seed=4), "nfd": korean_text[:60], "bpe": make_text(150, seed=5) + "é"}[kind]
    if kind == "char":
        tok = CharTokenizer(sorted(set(make_text(6000))))
    elif kind == "nfd":
        tok = CharTokenizer(sorted(set(unicodedata.normalize("NFD", korean_text))), normalize="nfd")
    else:
        tok = bpe
    lm = lm_of(random_model(tok.vocab_size, cell), tok)
    r, ev = lm.score(text), lm.evaluate(text)
    assert r.bits_per_char == pytest.approx(ev.bits_per_char, abs=1e-6)
    assert r.total_bits == pytest.approx(ev.nats / math.log(2), abs=1e-4)
    assert len(r.bits) == len(text)


@pytest.fixture(scope="module")
def korean_text() -> str:
    # Whole syllables, spaces and punctuation, as in the chat corpus (no file needed).
    return "오늘 날씨가 정말 좋네요. 내일은 비가 온대요? 그럼 우산을 챙겨야겠어요! 고마워요, 잘 자요.\n" * 3


def test_chunks_carry_the_state():
    """Scoring in chunks of 7 tokens gives the figures of one pass: the state is carried."""
    tok = CharTokenizer(sorted(set(make_text(6000))))
    model = random_model(tok.vocab_size, "lstm")
    ids = tok.encode(make_text(100, seed=2))
    one = token_predictions(model, ids, CPU, top=3, chunk=1000)
    chunked = token_predictions(model, ids, CPU, top=3, chunk=7)
    for a, b in zip(one, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_unknown_characters_are_scored_as_unk_and_named():
    tok = CharTokenizer(list("ab"))
    lm = lm_of(random_model(tok.vocab_size), tok)
    r = lm.score("abzab")
    assert r.unknown_chars == ["z"] and r.bits[2] is not None
    assert r.bits_per_char == pytest.approx(lm.evaluate("abzab").bits_per_char, abs=1e-6)


@pytest.fixture
def run_file(tmp_path) -> Path:
    tok = CharTokenizer(sorted(set(make_text(6000))))
    return write_checkpoint(tmp_path / "model.pt", random_model(tok.vocab_size, "gru"), tok)


def test_cli_json_to_stdout_is_one_document(run_file):
    text = make_text(120, seed=1)
    result = runner.invoke(app, ["score", str(run_file), text, "--json", "-", "--top", "2"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["schema"] == "charlm.score/1"
    assert len(d["positions"]) == len(text) and d["positions"][0]["bits"] is None
    assert all(len(p["top"]) == 2 for p in d["positions"][1:])
    import charlm

    assert d["bits_per_char"] == pytest.approx(charlm.load(run_file, device="cpu").evaluate(text).bits_per_char, abs=1e-6)
    assert sum(p["bits"] for p in d["positions"][1:]) == pytest.approx(d["total_bits"], rel=1e-9)


def test_cli_reads_a_file_or_stdin_and_renders_a_table(run_file, tmp_path):
    text = "the cat sat on the mat.\n"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    from_file = runner.invoke(app, ["score", str(run_file), "--file", str(tmp_path / "t.txt"), "--rows", "3"])
    assert from_file.exit_code == 0, from_file.output
    assert "the cat sat on the mat." in from_file.stdout and "bits/char" in from_file.stdout
    assert "the 3 most surprising positions" in from_file.stdout and "expected" in from_file.stdout
    from_stdin = runner.invoke(app, ["score", str(run_file), "-", "--rows", "3"], input=text)
    assert from_stdin.exit_code == 0 and from_stdin.stdout == from_file.stdout
    out = tmp_path / "s.json"
    assert runner.invoke(app, ["score", str(run_file), text, "--json", str(out)]).exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8"))["characters"] == len(text)


def test_cli_mistakes(run_file, tmp_path):
    none = runner.invoke(app, ["score", str(run_file)])
    assert none.exit_code == 2                                     # a usage error
    short = runner.invoke(app, ["score", str(run_file), "a"])
    assert short.exit_code == 1 and "nothing to score" in short.output
    missing = runner.invoke(app, ["score", str(run_file), "--file", str(tmp_path / "nope.txt")])
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    binary = runner.invoke(app, ["score", str(run_file), "--file", str(tmp_path / "bin.txt")])
    assert binary.exit_code == 1 and "not UTF-8" in binary.output


def test_python_m_charlm_score(run_file):
    proc = subprocess.run([sys.executable, "-m", "charlm", "score", str(run_file), "-", "--json", "-"],
                          input="the dog ran to the house.", capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["characters"] == len("the dog ran to the house.")


def test_without_colour_a_line_of_shades_carries_the_surprisal(tiny_run):
    from charlm.cli.score import SURPRISAL_SHADES

    text = "the cat sat on the mat.\nthe end"
    r = CliRunner().invoke(app, ["score", str(tiny_run), text, "--rows", "0"],
                           env={"NO_COLOR": "1", "COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    for line in text.split("\n"):
        i = lines.index(line)
        under = lines[i + 1]
        assert 0 < len(under) <= len(line) and set(under) <= set(SURPRISAL_SHADES) | {"·"}, under
    assert lines[lines.index("the cat sat on the mat.") + 1][0] == "·"      # the first token: no prediction
    legend = " ".join(r.stdout.split())
    assert "bits (the line under the text):" in legend and "'▓' 4-8" in legend


def test_shaded_lines_wrap_at_the_width_and_shade_every_cell():
    from charlm.cli.score import shaded_lines

    lines = shaded_lines("ab한c\tdef", [None, 0.5, 3.0, 9.0, 1.5, 5.0, 5.0, 5.0], width=4)
    assert lines == ["ab한", "· ▒▒", "c→de", "█░▓▓", "f", "▓"]
