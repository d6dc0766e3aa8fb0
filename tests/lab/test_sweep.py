"""charlm sweep: one run per grid point, validated first, resumable, one table of figures."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from charlm.errors import CharLMError, ConfigError, RunDirError
from charlm.lab.sweep import SweepPointStarted, grid_points, parse_grid, plan, point_name, run_sweep
from charlm.training import train, resolve_options
from helpers import stop_after

BASE = {"hidden_size": 16, "embedding_size": 8, "batch_size": 4, "eval_every": 5,
        "sample_length": 0, "warmup_steps": 0, "max_steps": 6, "device": "cpu"}


def test_grid_values_take_the_option_types():
    axes = parse_grid(["seq_len=8,16", "--model=lstm,gru", "lr=1e-3,3e-3", "tensorboard=false"])
    assert axes == {"seq_len": [8, 16], "model": ["lstm", "gru"], "lr": [0.001, 0.003], "tensorboard": [False]}
    points = grid_points(axes)
    assert len(points) == 8 and points[1] == {"seq_len": 8, "model": "lstm", "lr": 0.003, "tensorboard": False}
    assert point_name({"seq_len": 8, "corpus": "/a/b/echo-d20.txt"}) == "seq_len=8,corpus=echo-d20"


@pytest.mark.parametrize("spec, message", [
    ("seq_len", "NAME=V1,V2"), ("seq_len=", "NAME=V1,V2"), ("hiden_size=8", "not a train option"),
    ("out=a,b", "not a train option"), ("seq_len=8,x", "not a valid int"), ("seq_len=8,8", "repeats"),
])
def test_bad_grids_are_one_line_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid([spec])


@settings(max_examples=40, deadline=None)
@given(values=st.text(alphabet=", \t", min_size=1).filter(lambda t: "," in t),
       axis=st.sampled_from(["seq_len", "model", "lr", "max_steps"]))
def test_an_axis_with_no_values_is_refused_not_a_sweep_of_zero_points(values, axis):
    with pytest.raises(ConfigError, match=f"--grid {axis} has no values"):
        parse_grid([f"{axis}={values}"])


@pytest.mark.parametrize("base", [[1, 2], "x", 3, None])
def test_a_manifest_whose_base_is_not_a_table_is_one_line(base, corpus_file, tmp_path):
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"schema": "charlm.sweep/1", "axes": {}, "base": base}))
    with pytest.raises(RunDirError, match="not a charlm sweep's manifest"):
        plan({"seq_len": [8]}, {**BASE, "corpus": str(corpus_file)}, folder)


def test_a_budget_given_as_an_axis_is_a_budget(corpus_file, tmp_path):
    base = {**BASE, "max_steps": None, "corpus": str(corpus_file)}
    planned = plan({"max_steps": [3, 6]}, base, tmp_path / "sweep")
    assert [options["max_steps"] for _, options in planned] == [3, 6]
    with pytest.raises(ConfigError, match="budget"):   # still required when no axis gives it
        plan({"seq_len": [8]}, base, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_every_point_is_validated_before_anything_is_written(corpus_file, tmp_path):
    folder = tmp_path / "sweep"
    with pytest.raises(ConfigError, match="--seq-len"):
        run_sweep({"seq_len": [8, 0]}, {**BASE, "corpus": str(corpus_file)}, folder)
    assert not folder.exists()
    with pytest.raises(ConfigError, match="budget"):
        run_sweep({"seq_len": [8]}, {**BASE, "max_steps": None, "corpus": str(corpus_file)}, folder)
    assert not folder.exists()


def test_a_sweep_trains_every_point_once_and_a_rerun_resumes_what_was_cut_short(corpus_file, tmp_path):
    folder = tmp_path / "sweep"
    base = {**BASE, "corpus": str(corpus_file)}
    axes = {"seq_len": [8, 16], "model": ["gru"]}
    # The second point was started by an earlier launch and cut short after 3 of its 6 steps.
    model_config, train_config = resolve_options({**base, "seq_len": 16, "model": "gru",
                                                  "out": str(folder / "seq_len=16,model=gru")})
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"schema": "charlm.sweep/1", "axes": axes, "base": base}))
    train(train_config, model_config, should_stop=stop_after(3))

    events = []
    result = run_sweep(axes, base, folder, on_event=events.append)
    started = [e for e in events if isinstance(e, SweepPointStarted)]
    assert [(e.name, e.resumed) for e in started] == [("seq_len=8,model=gru", False),
                                                     ("seq_len=16,model=gru", True)]
    assert [p.steps for p in result.points] == [6, 6]
    for p in result.points:
        assert p.status == "trained" and p.final_val_loss is not None and p.best_val_loss <= p.final_val_loss
        assert p.tokens_per_s > 0
    assert result.points[0].values == {"seq_len": 8, "model": "gru"}

    # A rerun trains nothing: every point is finished.
    metrics = {p.name: (folder / p.name / "metrics.jsonl").read_bytes() for p in result.points}
    again = run_sweep(axes, base, folder)
    assert [p.status for p in again.points] == ["done", "done"]
    assert {p.name: (folder / p.name / "metrics.jsonl").read_bytes() for p in again.points} == metrics
    assert again.to_json()["points"][0]["best_val_loss"] == result.points[0].best_val_loss

    # The same folder with other shared options is another sweep: refused, nothing touched.
    with pytest.raises(RunDirError, match="differ in: lr"):
        run_sweep(axes, {**base, "lr": 1e-2}, folder)


def test_the_command_trains_the_grid_prints_one_table_and_writes_json(corpus_file, tmp_path):
    from typer.testing import CliRunner

    from charlm.cli import app

    folder = tmp_path / "sw"
    args = ["sweep", str(corpus_file), "--grid", "seq_len=8,16", "--grid", "model=rnn", "--out", str(folder),
            "--hidden-size", "16", "--embedding-size", "8", "--batch-size", "4", "--eval-every", "5",
            "--max-steps", "5", "--warmup-steps", "0", "--sample-length", "0", "--device", "cpu"]
    r = CliRunner().invoke(app, [*args, "--json", str(tmp_path / "s.json"), "--inspect"])
    assert r.exit_code == 0, r.output
    assert "[1/2] training seq_len=8,model=rnn" in r.stdout and "[2/2]" in r.stdout
    table = r.stdout[r.stdout.index("sweep "):]
    assert "best" in table and "context" in table and "gradient horizon" in table
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["schema"] == "charlm.sweep/1" and [p["values"]["seq_len"] for p in doc["points"]] == [8, 16]
    assert all(p["steps"] == 5 for p in doc["points"])
    # A 600-token validation text is too short for inspect-context's 2,048 tokens of history:
    # said once per point, the columns stay empty, the sweep goes on.
    assert r.stdout.count("not inspected: the text has 600 tokens") == 2
    # The same command again trains nothing and prints the same figures as a JSON document.
    again = CliRunner().invoke(app, [*args, "--json", "-"])
    assert again.exit_code == 0, again.output
    assert [p["best_val_loss"] for p in json.loads(again.stdout)["points"]] == \
        [p["best_val_loss"] for p in doc["points"]]
    bad = CliRunner().invoke(app, ["sweep", str(corpus_file), "--grid", "seq_len=8", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "budget" in bad.stderr and not (tmp_path / "x").exists()


def test_a_grid_too_big_to_run_is_refused_before_it_is_built():
    """300 x 300 x 300 values would be 27 million points: one line, and nothing allocated."""
    from charlm.errors import ConfigError
    from charlm.lab.sweep import MAX_POINTS

    axes = {"seq_len": list(range(1, 301)), "batch_size": list(range(1, 301)), "hidden_size": list(range(1, 301))}
    with pytest.raises(ConfigError, match="27,000,000 points"):
        grid_points(axes)
    assert len(grid_points({"seq_len": list(range(MAX_POINTS))})) == MAX_POINTS


@pytest.mark.parametrize("axis, values, message", [
    ("seq_len", [8, 10_000_000], "seq_len=10000000: corpus .* has at most [0-9,]+ tokens, too few for 4 streams"),
    ("batch_size", [4, 100_000], "batch_size=100000: corpus .* too few for 100000 streams"),
    ("hidden_size", [16, 10_000_000], "hidden_size=10000000: the model would need about"),
])
def test_data_and_memory_of_every_point_are_checked_before_the_first_trains(axis, values, message,
                                                                          corpus_file, tmp_path):
    """A point whose chunk the corpus cannot fill, or whose model the machine cannot hold (was:
    refused by its own launch, after every point before it trained): one line naming the point,
    and no folder."""
    folder = tmp_path / "sweep"
    with pytest.raises(CharLMError, match=message):
        run_sweep({axis: values}, {**BASE, "corpus": str(corpus_file)}, folder)
    assert not folder.exists()


def test_a_device_the_machine_lacks_is_refused_before_the_first_point_trains(corpus_file, tmp_path, monkeypatch):
    """--grid device=cpu,cuda on a machine without CUDA (was: the cpu point trained, then the cuda
    point failed)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = tmp_path / "sweep"
    with pytest.raises(CharLMError, match="grid point device=cuda: --device cuda was asked for, but no CUDA GPU"):
        run_sweep({"device": ["cpu", "cuda"]}, {**BASE, "corpus": str(corpus_file)}, folder)
    assert not folder.exists()


def test_ctrl_c_in_a_sweep_advises_rerunning_the_sweep(corpus_file, tmp_path, monkeypatch):
    """Ctrl-C during a point (was: "continue with `charlm train --out POINT --resume`", which
    finishes that point only): the advice is the sweep command with its folder, which then resumes."""
    import signal

    import charlm.lab.sweep as sweep
    from charlm.errors import Interrupted

    def interrupted(options, resume, on_event):
        err = Interrupted(f"SIGINT: saved {options['out']}/last.pt at step 3; continue with "
                          f"`charlm train --out {options['out']} --resume`")
        err.exit_code = 128 + signal.SIGINT
        raise err

    monkeypatch.setattr(sweep, "_train_point", interrupted)
    folder = tmp_path / "sweep"
    with pytest.raises(Interrupted) as caught:
        run_sweep({"seq_len": [8, 16]}, {**BASE, "corpus": str(corpus_file)}, folder)
    message = str(caught.value)
    assert "charlm train" not in message and "--resume" not in message
    assert f"run the same `charlm sweep` command again with --out {folder}" in message
    assert "saved" in message and "(point 1/2)" in message and caught.value.exit_code == 130


def test_a_finished_point_of_a_corpus_that_changed_is_not_taken_as_done(corpus_file, tmp_path):
    """The corpus file edited between two launches of the same sweep (was: its finished points
    skipped as done, their figures from the old text in the table beside new ones): refused before
    anything trains, naming the point; the same text again is still skipped."""
    folder = tmp_path / "sweep"
    base = {**BASE, "max_steps": 3, "corpus": str(corpus_file)}
    run_sweep({"seq_len": [8]}, base, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    again = run_sweep({"seq_len": [8]}, base, folder)
    assert [p.status for p in again.points] == ["done"]
    corpus_file.write_text(corpus_file.read_text(encoding="utf-8").replace("the", "a"), encoding="utf-8")
    with pytest.raises(RunDirError, match="grid point seq_len=8 was trained on another version of its corpus"):
        run_sweep({"seq_len": [8, 16]}, base, folder)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
