"""The echo corpus and the truncation experiment: BPTT(k) learns a dependency D steps back only
when a chunk can hold it (k > D)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from charlm.cli import app
from charlm.errors import CharLMError
from charlm.lab.truncation import CUE, FILLER, KEYS, echo_text, truncation_grid


@pytest.mark.parametrize("distance", [1, 2, 7])
def test_echo_records_put_the_key_again_distance_steps_after_it(distance):
    text = echo_text(distance, records=50, keys=4, seed=3)
    lines = text.splitlines()
    assert len(lines) == 50 and text.endswith("\n")
    for line in lines:
        key, middle, echo = line[0], line[1:-1], line[-1]
        assert key == echo and key in KEYS[:4]
        assert len(middle) == distance and middle[-1] == CUE        # D - 1 fillers, then the cue
        assert all(ch in FILLER for ch in middle[:-1])
        # read at the cue, the key lies exactly `distance` steps back
        assert line[line.index(CUE) - distance] == key
    assert len({line[0] for line in lines}) == 4                    # every key is used
    assert echo_text(distance, 50, 4, seed=3) == text != echo_text(distance, 50, 4, seed=4)


def test_corpus_make_echo(tmp_path):
    runner = CliRunner()
    out = tmp_path / "e.txt"
    r = runner.invoke(app, ["corpus", "make", "echo", "--distance", "12", "--records", "30", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 30
    r = runner.invoke(app, ["corpus", "make", "echo", "--distance", "12", "-o", str(out)])
    assert r.exit_code == 1 and "--force" in r.output                # never overwrites silently
    r = runner.invoke(app, ["corpus", "make", "echo", "--distance", "0", "-o", str(tmp_path / "f.txt")])
    assert r.exit_code == 1 and "--distance" in r.output
    r = runner.invoke(app, ["corpus", "make", "copy"])
    assert r.exit_code == 1 and "echo" in r.output


def test_grid_validates_its_options():
    with pytest.raises(CharLMError, match="unknown cell"):
        truncation_grid(models=["transformer"])
    with pytest.raises(CharLMError, match="--chunks"):
        truncation_grid(models=["gru"], chunks=[0])


def test_tiny_grid_learns_the_echo_only_when_the_chunk_spans_it(tmp_path):
    """A GRU learns an echo 3 steps back with k = 8, not with k = 2 (two keys: chance 50%)."""
    runner = CliRunner()
    out = tmp_path / "grid.json"
    r = runner.invoke(app, ["truncation-table", "--models", "gru", "--distances", "3", "--chunks", "2,8",
                            "--steps", "150", "--hidden-size", "16", "--batch-size", "16", "--lr", "0.03",
                            "--keys", "2", "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    acc = {c["chunk"]: c["accuracy"] for c in doc["cells"]}
    assert doc["chance"] == 0.5
    assert acc[8] > 0.9, acc
    assert acc[2] < 0.65, acc
    assert "k=8" in r.output and "echo accuracy" in r.output
