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
        truncation_grid(models=["transformers"])
    with pytest.raises(CharLMError, match="--chunks"):
        truncation_grid(models=["gru"], chunks=[0])
    with pytest.raises(CharLMError, match="--seeds"):
        truncation_grid(models=["gru"], seeds=[1, 1])


def test_tiny_grid_learns_the_echo_only_when_the_chunk_spans_it(tmp_path):
    """A GRU learns an echo 3 steps back with k = 8, not with k = 2 (two keys: chance 50%)."""
    runner = CliRunner()
    out = tmp_path / "grid.json"
    r = runner.invoke(app, ["truncation-table", "--models", "gru", "--distances", "3", "--chunks", "2,8",
                            "--steps", "150", "--hidden-size", "16", "--batch-size", "16", "--lr", "0.03",
                            "--keys", "2", "--seeds", "0,1", "--json", str(out)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == "charlm.truncation-table/2" and doc["chance"] == 0.5 and doc["seeds"] == [0, 1]
    assert sorted((c["seed"], c["chunk"]) for c in doc["cells"]) == [(0, 2), (0, 8), (1, 2), (1, 8)]
    summary = {s["chunk"]: s for s in doc["summary"]}
    for k in (2, 8):   # the summary is the mean and range of the seeds' own figures
        accs = [c["accuracy"] for c in doc["cells"] if c["chunk"] == k]
        assert summary[k]["mean"] == pytest.approx(sum(accs) / 2) and summary[k]["min"] == min(accs)
    assert summary[8]["min"] > 0.9, summary                    # every seed learns it when k > D
    assert summary[2]["max"] < 0.65, summary                   # no seed learns it when k < D
    assert "k=8" in r.output and "mean and range (lowest-highest) over 2 seeds" in r.output
    assert all(len(line) <= 80 for line in r.output.splitlines())


def test_a_kept_workdir_never_reuses_a_corpus_made_with_other_settings(tmp_path):
    """--workdir keeps the corpora: a rerun with other --keys must not score models trained on the
    first run's text (the sweep would take its finished points as done)."""
    common = ["truncation-table", "--models", "gru", "--distances", "3", "--chunks", "8", "--steps", "3",
              "--hidden-size", "4", "--batch-size", "2", "--seeds", "0", "--workdir", str(tmp_path / "w")]
    runner = CliRunner()
    for keys in ("2", "4"):
        r = runner.invoke(app, common + ["--keys", keys, "--json", str(tmp_path / f"k{keys}.json")])
        assert r.exit_code == 0, r.output
    corpora = sorted(p.name for p in (tmp_path / "w").glob("echo-*.txt"))
    assert len(corpora) == 2 and any("keys2" in c for c in corpora) and any("keys4" in c for c in corpora)
    assert json.loads((tmp_path / "k4.json").read_text())["chance"] == 0.25


def test_a_grid_the_pre_flight_refuses_writes_nothing(tmp_path):
    """Every seed's sweep is checked before the work folder or an echo corpus is written: a batch
    the echo corpus cannot fill is one line, and --workdir is not even made."""
    work = tmp_path / "w"
    r = CliRunner().invoke(app, ["truncation-table", "--models", "gru", "--distances", "3", "--chunks", "8",
                                 "--steps", "3", "--hidden-size", "4", "--batch-size", "100000",
                                 "--seeds", "0,1", "--workdir", str(work)])
    assert r.exit_code == 1, r.output
    assert "lower --batch-size or --chunks" in r.output and "nothing was trained" in r.output
    assert not work.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
