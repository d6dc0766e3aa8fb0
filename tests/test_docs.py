"""The docs and the tool agree: every `charlm ...` command line in the README and docs/ names a
command and options that exist, every module path and dotted name they mention resolves, and the
README's Python snippet runs."""

from __future__ import annotations

import importlib
import re
import shlex

import pytest
import typer

from charlm.cli import app
from helpers import REPO, make_text

DOCS = [p for p in [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))] if p.exists()]
ROOT = typer.main.get_command(app)


def _blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def command_lines(text: str) -> list[str]:
    """`charlm ...` invocations: `$ charlm` lines of console blocks, `charlm` lines of bash blocks,
    and inline code that starts with `charlm `."""
    found = []
    for lang, body in _blocks(text):
        for line in body.splitlines():
            line = line.strip()
            if lang == "console" and line.startswith("$ charlm "):
                found.append(line[2:])
            elif lang in ("bash", "") and line.startswith("charlm "):
                found.append(line)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    # Inline code on one line; a quoted sentence ("charlm run lock: held by ...") is not a command.
    found += [m for m in re.findall(r"`(charlm [^`\n]+)`", prose) if ": " not in m]
    return found


def _words(line: str) -> list[str]:
    line = re.split(r"\s+#\s|\s\|\s|\s>\s|\s&&\s|\s2>", line)[0]   # a comment, a pipe, a redirect
    try:
        return shlex.split(line)
    except ValueError:     # an unclosed quote in a line cut short on purpose
        return line.split()


def check_command(line: str) -> list[str]:
    """What is wrong with one command line: an unknown command, or an option it does not have."""
    words = _words(line)[1:]
    command = ROOT   # typer's own click: commands are told apart by having subcommands
    path = ["charlm"]
    while hasattr(command, "commands") and words and not words[0].startswith("-"):
        if words[0] not in command.commands:   # RUN, NAME...: a placeholder for a command
            return [] if words[0].isupper() else [f"{line!r}: no command {' '.join(path + [words[0]])}"]
        command = command.commands[words[0]]
        path.append(words.pop(0))
    known = {"--help", "-h"}
    for param in command.params:
        known.update(getattr(param, "opts", []))
        known.update(getattr(param, "secondary_opts", []))
    if command is ROOT:
        return []
    return [f"{line!r}: {' '.join(path)} has no option {w.split('=')[0]}" for w in words
            if w.startswith("-") and w != "-" and not re.fullmatch(r"-\d.*", w) and w.split("=")[0] not in known]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_line_in_the_docs_parses(doc):
    text = doc.read_text(encoding="utf-8")
    lines = command_lines(text)
    problems = [p for line in lines for p in check_command(line)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_what_it_should():
    assert check_command("charlm train input.txt --max-time 60 --out runs/a") == []
    assert check_command("charlm corpus get tinyshakespeare --sha256 00") == []
    assert check_command("charlm train --max-tme 60")
    assert check_command("charlm trian input.txt")
    assert check_command("charlm corpus fetch x")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_module_path_and_dotted_name_resolves(doc):
    text = doc.read_text(encoding="utf-8")
    missing = []
    # Paths at the start of a word (not inside a URL or ../shared/...), dotted names that are not
    # schema names such as charlm.score/1.
    for path in set(re.findall(r"(?<![\w/.-])((?:charlm|tests|benchmarks|docs|corpora)/[\w./-]*\w)", text)):
        if not (REPO / path).exists():
            missing.append(path)
    for dotted in set(re.findall(r"`(charlm(?:\.\w+)+)(?![\w/-])", text)):
        if not _resolves(dotted):
            missing.append(dotted)
    assert not missing, missing


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_the_readme_python_snippet_runs(tiny_run, tmp_path, monkeypatch):
    """The README's own example, with its run and corpus swapped for tiny ones and its budget cut
    to a few steps: every line runs, and stream() yields text."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    snippet = next(body for lang, body in _blocks(text) if lang == "python")
    corpus = tmp_path / "input.txt"
    corpus.write_text(make_text(3000), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = (snippet.replace('"runs/shakespeare"', repr(str(tiny_run)))
            .replace('"ROMEO:"', '"the "').replace('"JULIET:"', '"a "')
            .replace('"max_time": 60', '"max_steps": 3, "eval_every": 3, "sample_length": 0, '
                                       '"hidden_size": 8, "out": "api-run"'))
    assert code != snippet
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "api-run" / "last.pt").exists()
