"""`charlm sample RUN --interactive`: a prompt loop over one carried state, with commands.

Fed plain lines on stdin (not a terminal: no prompt is printed), through a subprocess and through
CliRunner. Known answers come from the API: at temperature 0 a reply is the greedy continuation of
everything typed and generated so far.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import charlm  # noqa: E402
from charlm.cli import app  # noqa: E402
from charlm.config import ModelConfig, SampleConfig  # noqa: E402
from charlm.sampling import Session  # noqa: E402
from helpers import REPO, make_text

runner = CliRunner()


def greedy(lm, context: str, length: int) -> str:
    return lm.sample(prime=context, length=length, temperature=0)


def test_subprocess_lines_continue_one_state(tiny_run):
    lm = charlm.load(tiny_run, device="cpu")
    stdin = "the \n/length 12\nthe \n/reset\nthe \n/quit\nnever read\n"
    p = subprocess.run([sys.executable, "-m", "charlm", "sample", str(tiny_run), "--interactive",
                        "--temperature", "0", "--length", "20"],
                       input=stdin, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(REPO)})
    assert p.returncode == 0 and p.stderr == "", p.stderr
    first, second, third = p.stdout.split("\n")[:3]
    assert p.stdout.count("\n") == 3                     # one line per reply, nothing else
    assert first == greedy(lm, "\nthe ", 20)
    assert second == greedy(lm, "\nthe " + first + "the ", 12)   # the state was carried
    assert third == greedy(lm, "\nthe ", 12)                      # /reset forgot it


def test_clirunner_top_pick_and_mistakes(tiny_run):
    lm = charlm.load(tiny_run, device="cpu")
    session = Session(lm.model, lm.tokenizer, SampleConfig(temperature=0, length=5), lm.device)
    session.feed("the ")
    top = session.top(3)
    assert [p for *_, p in top] == sorted((p for *_, p in top), reverse=True) and sum(p for *_, p in top) <= 1
    lines = "the \n/top 3\n2\n/temp abc\n/bogus\n/temp 0\n\n"
    r = runner.invoke(app, ["sample", str(tiny_run), "--interactive", "--temperature", "0", "--length", "5"],
                      input=lines)
    assert r.exit_code == 0, r.output
    out = r.stdout.split("\n")
    assert out[0] == greedy(lm, "\nthe ", 5)
    shown = out[1:4]                                      # three numbered choices, best first
    assert [line.split()[0] for line in shown] == ["1", "2", "3"]
    session = Session(lm.model, lm.tokenizer, SampleConfig(temperature=0, length=5), lm.device)
    session.feed("the " + out[0])
    picked = session.top(3)[1][1]
    assert out[4] == picked                               # the second choice was appended
    # An empty line continues from there: the greedy continuation after the pick.
    assert out[5] == greedy(lm, "\nthe " + out[0] + picked, 5)
    assert "/temp takes a temperature >= 0 (0 is greedy), got 'abc'" in r.stderr
    assert "unknown command '/bogus'" in r.stderr
    assert "Traceback" not in r.output


def test_unknown_characters_in_a_line_do_not_end_the_session(tiny_run):
    r = runner.invoke(app, ["sample", str(tiny_run), "--interactive", "--temperature", "0", "--length", "4"],
                      input="ZQ§\nthe \n")
    assert r.exit_code == 0
    assert "vocabulary lacks" in r.stderr and len(r.stdout.split("\n")[0]) == 4


def test_session_api_matches_one_pass():
    torch.manual_seed(0)
    from charlm.corpus.tokenizers import CharTokenizer
    from charlm.model import CharRNN

    tok = CharTokenizer(sorted(set(make_text(500))))
    model = CharRNN(ModelConfig(vocab_size=tok.vocab_size, embedding_size=8, hidden_size=16)).eval()
    s = Session(model, tok, SampleConfig(temperature=0, length=10, prime="the "))
    s.feed("cat ")
    reply = "".join(s.reply())
    lm = charlm.api.LanguageModel(model, tok, None, torch.device("cpu"), Path("m"))
    assert reply == greedy(lm, "the cat ", 10)


def test_interactive_refuses_beam_and_several_samples(tiny_run):
    for extra in (["--beam", "3"], ["--num-samples", "2"]):
        r = runner.invoke(app, ["sample", str(tiny_run), "--interactive", *extra], input="the \n")
        assert r.exit_code == 1 and "drop --beam and --num-samples" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


# --- on a terminal (stdin.isatty() patched: CliRunner's stdin is not one) ----------------------

def as_terminal(monkeypatch):
    from charlm.cli import generate

    monkeypatch.setattr(generate, "_stdin_is_terminal", lambda: True)


def test_every_command_says_what_it_did_and_errors_speak_of_what_was_typed(tiny_run, monkeypatch):
    as_terminal(monkeypatch)
    lines = "/temp 0\n/length 7\n/reset\n/temp -1\n/length x\n/top 0\n"
    r = runner.invoke(app, ["sample", str(tiny_run), "--interactive", "--length", "5"], input=lines)
    assert r.exit_code == 0, r.output
    for said in ("temperature 0 (greedy)", "length 7 characters per reply", "reset: back to the prime",
                 "/temp takes a temperature >= 0 (0 is greedy), got '-1'",
                 "/length takes a whole number of characters >= 0, got 'x'", "/top takes a whole number >= 1, got '0'"):
        assert said in r.stderr, r.stderr
    assert "--temperature" not in r.stderr and "--length" not in r.stderr
    r = runner.invoke(app, ["sample", str(tiny_run), "--interactive"], input="ZQ§\n")
    error = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "what you typed has characters the model's vocabulary lacks" in error[0]
    assert "prime" not in error[0]


def test_ctrl_d_ends_on_a_fresh_line(tiny_run, monkeypatch):
    as_terminal(monkeypatch)
    r = runner.invoke(app, ["sample", str(tiny_run), "--interactive"], input="")
    assert r.exit_code == 0 and r.stdout == "> \n"


def test_ctrl_c_stops_the_reply_not_the_session(tiny_run, monkeypatch):
    as_terminal(monkeypatch)

    def interrupted_reply(self):
        yield "ab"
        raise KeyboardInterrupt

    monkeypatch.setattr(Session, "reply", interrupted_reply)
    r = runner.invoke(app, ["sample", str(tiny_run), "--interactive"], input="the \nthe \n")
    assert r.exit_code == 0, r.output
    assert r.stdout.count("ab\n") == 2 and "reply stopped" in r.stderr


@pytest.mark.parametrize("after_top", ["/temp 0", "/length 3", "/reset", "the ", "/quit", "9"])
def test_a_line_after_top_that_is_no_choice_is_read_as_usual(tiny_run, after_top):
    """After /top, a command or text on the next line (was: taken as a choice, refused with "no
    choice '/temp 0'" and lost) is read as any line is; a number out of range is still refused."""
    lm = charlm.load(tiny_run, device="cpu")
    lines = f"/top 3\n{after_top}\n/length 2\nthe \n"
    r = runner.invoke(app, ["sample", str(tiny_run), "--interactive", "--temperature", "0", "--length", "4"],
                      input=lines)
    assert r.exit_code == 0, r.output
    out = r.stdout.split("\n")
    assert [line.split()[0] for line in out[:3]] == ["1", "2", "3"]
    if after_top == "9":
        assert "no choice '9': pick a number from 1 to 3" in r.stderr
    else:
        assert "no choice" not in r.stderr
    if after_top == "/quit":
        assert out[3:] == [""]                                       # the session ended there
    elif after_top == "the ":
        assert out[3] == greedy(lm, "\nthe ", 4) and out[4] == greedy(lm, "\nthe " + out[3] + "the ", 2)
    else:
        assert out[3] == greedy(lm, "\nthe ", 2)
