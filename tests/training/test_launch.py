"""One launch decision: new / fill / resume, a torchrun restart, and the checks made once.

``training.launch`` decides what a launch does from the options and the disk, reads last.pt once
and checks it; the set-up takes the lock and refuses a folder that changed since.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_text
from typer.testing import CliRunner

import charlm.devices as devices
import charlm.training.setup as setup_mod
from charlm.checkpoint import load_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import ConfigError, DeviceError, RunDirError
from charlm.training import plan_configs, plan_launch, resolve_options, train_launch
from charlm.training.launch import decide
from charlm.util import RUN_MARKER

runner = CliRunner()
TINY = dict(hidden_size=8, embedding_size=8)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "c.txt"
    path.write_text(make_text(3000), encoding="utf-8")
    return path


def config(corpus: Path, out: Path, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), out=str(out), max_steps=4, eval_every=4, batch_size=4, seq_len=8,
                sample_length=0, device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def finished(tmp_path: Path, corpus: Path) -> Path:
    out = tmp_path / "run"
    train_launch(plan_configs(config(corpus, out), ModelConfig(**TINY)))
    return out


def _folder_states(tmp_path: Path, finished: Path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    unstarted = tmp_path / "unstarted"
    unstarted.mkdir()
    (unstarted / RUN_MARKER).write_text('{"run_id": "0123456789abcdef"}\n')
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"missing": tmp_path / "missing", "empty": empty, "unstarted": unstarted, "users": users,
            "file": a_file, "finished": finished}


# (folder, resume, force) -> the mode, or the one refusal (a piece of its message)
DECISIONS = [
    ("missing", False, False, "new"),
    ("missing", False, True, "new"),
    ("missing", True, False, "has no last.pt"),
    ("empty", False, False, "fill"),
    ("empty", True, False, "has no last.pt"),
    ("unstarted", False, False, "fill"),        # killed before its first checkpoint: started again
    ("unstarted", True, False, "fill"),
    ("users", False, False, "already exists"),
    ("users", False, True, "not a charlm run directory"),
    ("users", True, False, "has no last.pt"),
    ("file", False, False, "is a file"),
    ("file", True, False, "is a file"),
    ("finished", False, False, "already exists; pass --resume to continue it or --force"),
    ("finished", False, True, "fill"),
    ("finished", True, False, "resume"),
]


@pytest.mark.parametrize("name,resume,force,expected", DECISIONS)
def test_every_folder_and_flag_gets_one_decision(tmp_path, finished, name, resume, force, expected):
    path = _folder_states(tmp_path, finished)[name]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    if expected in ("new", "fill", "resume"):
        run_dir, folder, mode = decide(str(path), resume, force)
        assert (mode, run_dir) == (expected, path)
        assert folder.has_last == (name == "finished")
    else:
        with pytest.raises(RunDirError, match=expected):
            decide(str(path), resume, force)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before    # deciding writes nothing


def test_out_left_out():
    assert decide(None, False, False) == (None, None, "new")
    with pytest.raises(ConfigError, match="--resume needs --out"):
        decide(None, True, False)


def test_a_resume_is_decided_and_checked_before_the_set_up(finished):
    launch = plan_launch({"out": str(finished), "resume": True, "max_steps": 8})
    assert launch.mode == "resume" and launch.resuming and launch.run_dir == finished
    assert launch.checkpoint.progress["step"] == 4 and launch.checkpoint.run_id
    # The checkpoint's model, not the defaults (--print-config shows the run's own model).
    assert (launch.model_config.hidden_size, launch.model_config.embedding_size) == (8, 8)
    assert launch.config.max_steps == 8 and launch.config.seq_len == 8
    with pytest.raises(ConfigError, match="--seq-len 8, but 16 was given"):
        plan_launch({"out": str(finished), "resume": True, "seq_len": 16})
    r = runner.invoke(app, ["train", "--out", str(finished), "--resume", "--print-config"])
    assert r.exit_code == 0, r.output
    assert "hidden_size = 8" in r.output


def test_an_unstarted_run_resumed_starts_again_with_a_note(tmp_path, corpus):
    out = tmp_path / "u"
    out.mkdir()
    (out / RUN_MARKER).write_text('{"run_id": "0123456789abcdef"}\n')
    launch = plan_configs(config(corpus, out, resume=True), ModelConfig(**TINY))
    assert launch.mode == "fill" and launch.checkpoint is None
    assert any("has no checkpoint yet" in n for n in launch.notes)
    train_launch(launch)
    assert load_checkpoint(out / "last.pt")["progress"]["step"] == 4


def test_a_torchrun_restart_of_a_run_with_a_checkpoint_becomes_a_resume(finished, corpus, monkeypatch):
    """The restarted workers get the first command line: no --resume, perhaps --force (which
    would wipe the run). The launch decides a resume instead, once, with a note."""
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    launch = plan_launch({"corpus": str(corpus), "out": str(finished), "force": True, "max_steps": 8,
                          **TINY, "batch_size": 4, "seq_len": 8, "device": "cpu"})
    assert launch.mode == "resume" and launch.config.resume and not launch.config.force
    assert launch.notes == (f"torchrun restart 1: resuming from {finished / 'last.pt'}",)
    dataclass_launch = plan_configs(config(corpus, finished, force=True, max_steps=8), ModelConfig(**TINY))
    assert dataclass_launch.mode == "resume" and not dataclass_launch.config.force
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert plan_configs(config(corpus, finished, force=True), ModelConfig(**TINY)).mode == "fill"


def test_a_folder_changed_after_the_decision_is_refused_under_the_lock(finished, corpus):
    """Between the decision and the lock another process saved the run: the launch must not
    restore the last.pt it read (now stale) or replace what it did not see."""
    stale = plan_launch({"out": str(finished), "resume": True, "max_steps": 8})
    train_launch(plan_launch({"out": str(finished), "resume": True, "max_steps": 6}))
    with pytest.raises(RunDirError, match="changed while this launch was being prepared"):
        train_launch(stale)
    assert load_checkpoint(finished / "last.pt")["progress"]["step"] == 6
    # A --force planned on a folder that a run then filled is refused the same way.
    other = finished.parent / "other"
    other.mkdir()
    force = plan_configs(config(corpus, other, force=True), ModelConfig(**TINY))
    train_launch(plan_configs(config(corpus, other, force=True, max_steps=2), ModelConfig(**TINY)))
    with pytest.raises(RunDirError, match="changed while"):
        train_launch(force)
    assert load_checkpoint(other / "last.pt")["progress"]["step"] == 2


def test_ranks_that_decided_differently_all_stop(finished, monkeypatch):
    launch = plan_launch({"out": str(finished), "resume": True})
    monkeypatch.setattr(setup_mod.distributed, "all_gather_object", lambda obj, ctx: ["resume", "new"])
    with pytest.raises(RunDirError, match=r"see the run folder .* differently \(rank 0: resume, rank 1: new\)"):
        setup_mod.build(launch, devices.resolve_device("cpu"), setup_mod.distributed.DistContext())
    assert load_checkpoint(finished / "last.pt")["progress"]["step"] == 4


@pytest.mark.parametrize("resume", [False, True])
def test_the_precision_is_checked_once_per_launch(tmp_path, corpus, finished, monkeypatch, resume):
    calls = []
    real = setup_mod.check_precision

    def counting(device, precision):
        calls.append(precision)
        return real(device, precision)
    monkeypatch.setattr(setup_mod, "check_precision", counting)
    cfg = (config(corpus, finished, resume=True, max_steps=6) if resume
           else config(corpus, tmp_path / "new", precision="fp32"))
    train_launch(plan_configs(cfg, None if resume else ModelConfig(**TINY)))
    assert len(calls) == 1


def test_a_new_run_refuses_a_precision_the_device_lacks_before_writing(tmp_path, corpus):
    with pytest.raises(DeviceError, match="--precision fp16 needs a CUDA GPU"):
        train_launch(plan_configs(config(corpus, tmp_path / "n", precision="fp16"), ModelConfig(**TINY)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_a_transformer_named_by_option_gets_its_own_recipe(tmp_path):
    """`--model transformer` alone is the 135 s recipe, not the recurrent 1x320 at lr 1e-2; a flag
    or a TOML value still wins, and the recurrent cells keep the fields' defaults."""
    model, config = resolve_options({"model": "transformer"})
    assert (model.layers, model.hidden_size, config.lr) == (2, 128, 5e-3)
    model, config = resolve_options({"model": "transformer", "hidden_size": 64, "lr": 1e-3})
    assert (model.layers, model.hidden_size, config.lr) == (2, 64, 1e-3)
    toml = tmp_path / "t.toml"
    toml.write_text('model = "transformer"\nlayers = 3\n')
    model, config = resolve_options({}, str(toml))
    assert (model.cell, model.layers, model.hidden_size) == ("transformer", 3, 128)
    model, config = resolve_options({"model": "gru"})
    assert (model.layers, model.hidden_size, config.lr) == (1, 320, 1e-2)
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "[default: 320; transformer: 128]" in r.output


@pytest.mark.parametrize("given,message", [
    ({"out": 5}, "--out must be a path given as a str, got int"),
    ({"out": "r", "resume": "no"}, "--resume is a switch: true or false, got 'no'"),
    ({"out": "r", "force": 1}, "--force is a switch: true or false, got 1"),
])
def test_what_decides_the_folder_is_checked_before_the_folder_is_looked_at(tmp_path, given, message):
    """A dict of options (the library) is not typed like a TOML file (load_toml checks those)."""
    with pytest.raises(ConfigError, match=message):
        plan_launch(given)
    with pytest.raises(ConfigError, match=message):
        resolve_options(given)
    with pytest.raises(ConfigError, match=message):
        plan_configs(TrainConfig(**given))
