"""Progress of long computations: the core calls a callback, the CLI draws a bar only on a terminal."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import charlm
from charlm.cli import app
from charlm.cli import progress as progress_module
from helpers import make_text

runner = CliRunner()


def calls_of(fn) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    fn(lambda done, total: seen.append((done, total)))
    return seen


def test_evaluate_and_score_report_progress_to_the_end(tiny_run):
    lm = charlm.load(tiny_run, device="cpu")
    text = make_text(3000, seed=2)
    for calls in (calls_of(lambda p: lm.evaluate(text, progress=p)),
                  calls_of(lambda p: lm.score(text, top=1, progress=p))):
        assert calls, "no progress reported"
        done = [d for d, _ in calls]
        assert done == sorted(done) and calls[-1][0] == calls[-1][1]
    # The callback changes nothing of the figures.
    assert lm.evaluate(text, progress=lambda d, t: None).loss == lm.evaluate(text).loss


@pytest.fixture
def terminal(monkeypatch) -> io.StringIO:
    """Pretend stdout and stderr are terminals; what the bar draws goes to the returned buffer."""
    drawn = io.StringIO()

    def console(stderr: bool = False) -> Console:
        return Console(file=drawn if stderr else io.StringIO(), force_terminal=True, width=80)

    monkeypatch.setattr(progress_module, "get_console", console)
    return drawn


@pytest.mark.parametrize("command", ["evaluate", "score"])
def test_a_bar_on_a_terminal_none_with_json_to_stdout(tiny_run, tmp_path, terminal, command):
    text = tmp_path / "text.txt"
    text.write_text(make_text(2000, seed=3), encoding="utf-8")
    args = [command, str(tiny_run), str(text)] if command == "evaluate" else [command, str(tiny_run), "--file", str(text)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert command in terminal.getvalue() and "100%" in terminal.getvalue()
    terminal.seek(0), terminal.truncate()
    r = runner.invoke(app, [*args, "--json", "-"])
    assert r.exit_code == 0 and json.loads(r.stdout)
    assert terminal.getvalue() == ""


def test_no_bar_in_a_pipe(tiny_run, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(make_text(2000, seed=3), encoding="utf-8")
    r = runner.invoke(app, ["evaluate", str(tiny_run), str(text)])
    assert r.exit_code == 0 and r.stderr == "" and "evaluate ━" not in r.stdout
