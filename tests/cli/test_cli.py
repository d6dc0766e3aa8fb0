"""The commands end to end: CliRunner for train -> sample -> evaluate, and `python -m charlm`."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from charlm.cli import app
from helpers import TINY

runner = CliRunner()


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_clean_error(result, *fragments):
    """Exit 1, one line on stderr, no traceback, and the message names the problem."""
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert "Traceback" not in result.output and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


def test_train_sample_evaluate(tmp_path, corpus_file):
    out = tmp_path / "run"
    r = run_cli("train", corpus_file, "--out", out, "--max-steps", "30", *TINY)
    assert r.exit_code == 0, r.output
    assert "eval step 30" in r.output and "checkpoints:" in r.output     # plain lines: not a tty
    r1 = run_cli("sample", out, "--prime", "the ", "--length", "80", "--seed", "5")
    r2 = run_cli("sample", out, "--prime", "the ", "--length", "80", "--seed", "5")
    assert r1.exit_code == 0 and r1.stdout == r2.stdout and r1.stdout.startswith("the ")
    assert len(r1.stdout) == len("the ") + 80 + 1
    r = run_cli("evaluate", out, corpus_file, "--json", "-")
    figures = json.loads(r.stdout)
    assert figures["tokens"] == len(corpus_file.read_text()) - 1
    assert figures["bits_per_char"] == pytest.approx(figures["loss"] / 0.6931471805599453, rel=1e-6)
    assert figures["perplexity"] > 1
    r = run_cli("evaluate", out, corpus_file, "--tail", "0.1")
    assert r.exit_code == 0 and "bits per character" in r.stdout


def test_python_dash_m_charlm(tmp_path, corpus_file):
    env = {**os.environ, "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "charlm", "train", str(corpus_file), "--out", str(tmp_path / "r"),
           "--max-steps", "12", *TINY]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-m", "charlm", "sample", str(tmp_path / "r"), "--length", "20",
                        "--seed", "1"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0 and len(p.stdout) >= 20


def test_errors_are_one_line(tmp_path, corpus_file):
    assert_clean_error(run_cli("train", tmp_path / "missing.txt"), "does not exist")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_clean_error(run_cli("train", empty, "--out", tmp_path / "e"), "empty")
    short = tmp_path / "short.txt"
    short.write_text("shorter than one chunk\n" * 2)
    assert_clean_error(run_cli("train", short, "--out", tmp_path / "s", *TINY), "--seq-len")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("abc caf\xe9 def".encode("latin-1"))
    assert_clean_error(run_cli("train", latin, "--out", tmp_path / "l"), "not UTF-8", "offset 7")
    notckpt = tmp_path / "model.pt"
    notckpt.write_bytes(b"this is not a checkpoint")
    assert_clean_error(run_cli("sample", notckpt), "not a readable charlm checkpoint")


def test_prime_with_unknown_characters_and_existing_run_dir(tmp_path, corpus_file):
    out = tmp_path / "run"
    assert run_cli("train", corpus_file, "--out", out, "--max-steps", "5", *TINY).exit_code == 0
    assert_clean_error(run_cli("sample", out, "--prime", "the ZQ§"), "'Q'", "'Z'", "'§'")
    assert_clean_error(run_cli("train", corpus_file, "--out", out, "--max-steps", "5", *TINY),
                       "already exists", "--resume", "--force")
    r = run_cli("train", corpus_file, "--out", out, "--max-steps", "5", "--force", *TINY)
    assert r.exit_code == 0


def test_json_convention_file_or_stdout(tmp_path, corpus_file):
    """`--json FILE` writes one document to FILE; `--json -` to stdout, and nothing else goes there."""
    tiny = ["inspect-gradients", "--models", "rnn", "--hidden-size", "8", "--embedding-size", "4",
            "--lags", "4", "--samples", "2", "--warmup", "2"]
    r = run_cli(*tiny, "--json", "-")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)                       # the whole of stdout is the document
    assert doc["schema"] == "charlm.inspect-gradients/1" and doc["settings"]["lags"] == 4
    r = run_cli(*tiny, "--csv", "-", "--json", tmp_path / "g.json")
    assert r.exit_code == 0 and r.stdout.splitlines()[0].startswith("model,cell,layer,state,lag")
    assert json.loads((tmp_path / "g.json").read_text()) == doc
    r = runner.invoke(app, [*tiny, "--csv", "-", "--json", "-"])
    assert r.exit_code == 2 and "only one of" in r.output

    r = run_cli("corpus", "info", corpus_file, "--json", tmp_path / "c.json")
    assert r.exit_code == 0 and "distinct characters" in r.stdout          # the report still prints
    assert json.loads((tmp_path / "c.json").read_text())["schema"] == "charlm.corpus-info/1"
    r = run_cli("corpus", "list", "--json", "-")
    assert json.loads(r.stdout)["schema"] == "charlm.corpus-list/1"
    assert json.loads(run_cli("runs", tmp_path, "--json", "-").stdout) == {
        "schema": "charlm.runs/1", "folder": str(tmp_path), "runs": []}


def test_columns_zero_still_prints(tmp_path):
    """COLUMNS=0 made Rich render everything, errors included, into nothing."""
    env = {**os.environ, "COLUMNS": "0", "NO_COLOR": "1"}
    p = subprocess.run([sys.executable, "-m", "charlm", "--help"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0 and "train" in p.stdout
    r = runner.invoke(app, ["runs", str(tmp_path / "nope")], env={"COLUMNS": "0"})
    assert r.exit_code == 1 and "does not exist" in r.stderr


def test_oserror_is_one_line(tmp_path, monkeypatch):
    """The last line of defence: an OSError no closer check caught names the path and the reason."""
    import charlm.runinfo

    def refuse(folder):
        raise PermissionError(13, "Permission denied", str(folder))
    monkeypatch.setattr(charlm.runinfo, "find_runs", refuse)
    assert_clean_error(run_cli("runs", tmp_path), f"{tmp_path}: Permission denied")
