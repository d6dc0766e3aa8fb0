"""Safe loading: checkpoints are read with torch.load(weights_only=True) only, so a malicious pickle
named best.pt is refused by every command that takes a checkpoint, and the code in it never runs.
Damaged files and files from other programs get one clear line, never a traceback."""

from __future__ import annotations

import builtins
import inspect
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import charlm
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import CheckpointError
from charlm.training import train
from helpers import make_text

runner = CliRunner()


PACKAGE = Path(charlm.__file__).parent


class Evil:
    """Unpickling this runs code: it creates the marker file (a stand-in for anything worse)."""

    def __init__(self, marker: Path, how: str):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch '{self.marker}'",))
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


def malicious_payloads(marker: Path) -> dict[str, bytes]:
    """The same attack in the three file formats torch.load knows."""
    fake = {"format": "charlm-checkpoint", "format_version": 1, "model": Evil(marker, "exec")}
    out = {"pickle": pickle.dumps(fake, protocol=2)}
    for name, zipped in (("torch-zip", True), ("torch-legacy", False)):
        path = marker.parent / f".{name}.tmp"
        torch.save({**fake, "model": Evil(marker, "system")}, path,
                   _use_new_zipfile_serialization=zipped)
        out[name] = path.read_bytes()
        path.unlink()
    return out


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny trained run directory and its corpus."""
    root = tmp_path_factory.mktemp("good")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(1500), encoding="utf-8")
    run = root / "run"
    train(TrainConfig(corpus=str(corpus), out=str(run), batch_size=4, seq_len=8, max_steps=6,
                      eval_every=3, device="cpu", sample_length=0),
          ModelConfig(cell="lstm", hidden_size=8, embedding_size=8))
    return run, corpus


def checkpoint_commands(target: Path, corpus: Path) -> dict[str, list[str]]:
    """Every command that reads a checkpoint, with the arguments that make it read `target`."""
    cmds = {
        "sample": ["sample", str(target), "--length", "5"],
        "evaluate": ["evaluate", str(target), str(corpus)],
        "train --resume": ["train", "--out", str(target), "--resume"],
    }
    names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    if "info" in names:
        cmds["info"] = ["info", str(target)]
    if "inspect-gradients" in names:
        cmds["inspect-gradients"] = ["inspect-gradients", str(target), "--lags", "3", "--samples", "1",
                                     "--warmup", "1", "--corpus", str(corpus)]
    if "score" in names:
        cmds["score"] = ["score", str(target), "the cat sat"]
    if "export" in names:
        cmds["export"] = ["export", str(target), "--format", "torchscript", "-o", str(corpus.parent / "m.pt")]
    if "inspect-context" in names:
        cmds["inspect-context"] = ["inspect-context", str(target), str(corpus)]
    # Any other command with a `checkpoint` argument added later is tried with it alone.
    for c in app.registered_commands:
        name = c.name or c.callback.__name__.replace("_", "-")
        if name not in cmds and "checkpoint" in inspect.signature(c.callback).parameters:
            cmds[name] = [name, str(target)]
    return cmds


def assert_one_clean_line(result, *fragments):
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


def test_the_payload_really_is_malicious(tmp_path):
    """Guard against a vacuous test: a plain pickle.load of the payload does create the marker."""
    marker = tmp_path / "ran"
    pickle.loads(malicious_payloads(marker)["pickle"])
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["pickle", "torch-zip", "torch-legacy"])
def test_malicious_best_pt_is_refused_by_every_command(tmp_path, good_run, fmt):
    _, corpus = good_run
    marker = tmp_path / "PWNED"
    payload = malicious_payloads(marker)[fmt]
    run = tmp_path / "evil_run"
    run.mkdir()
    for name in ("best.pt", "last.pt"):
        (run / name).write_bytes(payload)
    cmds = checkpoint_commands(run, corpus)
    assert {"sample", "evaluate", "train --resume"} <= set(cmds)
    for label, args in cmds.items():
        r = runner.invoke(app, args)
        assert not marker.exists(), f"{label} ran the pickle's code"
        assert_one_clean_line(r)
        assert "checkpoint" in r.stderr, (label, r.stderr)
    # The library entry point refuses it too.
    with pytest.raises(CheckpointError):
        charlm.load(run / "best.pt", device="cpu")
    # run listing commands must not execute it either
    for args in (["runs", str(tmp_path)],):
        r = runner.invoke(app, args)
        assert "Traceback" not in r.output
    assert not marker.exists()


def test_malicious_checkpoint_in_a_real_process(tmp_path):
    marker = tmp_path / "PWNED"
    (tmp_path / "best.pt").write_bytes(malicious_payloads(marker)["torch-zip"])
    p = subprocess.run([sys.executable, "-m", "charlm", "sample", str(tmp_path / "best.pt")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "refused by the safe loader" in p.stderr and "posix.system" in p.stderr
    assert not marker.exists()


def damaged_files(good: bytes, tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, a fragment the error message must contain)."""
    def saved(obj) -> bytes:
        path = tmp_path / ".saved.tmp"
        torch.save(obj, path)
        data = path.read_bytes()
        path.unlink()
        return data

    return {
        "empty": (b"", "is empty"),
        "truncated-half": (good[: len(good) // 2], "truncated or corrupt"),
        "truncated-tail": (good[:-20], "truncated or corrupt"),
        "random-bytes": (os.urandom(4096), "charlm checkpoint"),
        "text-file": (b"ROMEO: hello\n" * 50, "charlm checkpoint"),
        "torch-dict": (saved({"state_dict": {"w": torch.ones(2)}}), "written by another program"),
        "torch-tensor": (saved(torch.zeros(3, 3)), "written by another program"),
        "incomplete": (saved({"format": "charlm-checkpoint", "format_version": 1}), "incomplete"),
        "newer-format": (saved({"format": "charlm-checkpoint", "format_version": 99}), "newer charlm"),
    }


def test_damaged_and_foreign_checkpoints_get_one_line(tmp_path, good_run):
    run, corpus = good_run
    good = (run / "last.pt").read_bytes()
    for name, (data, fragment) in damaged_files(good, tmp_path).items():
        d = tmp_path / name
        d.mkdir()
        (d / "best.pt").write_bytes(data)
        for label, args in checkpoint_commands(d, corpus).items():
            if label == "train --resume":
                (d / "last.pt").write_bytes(data)
            r = runner.invoke(app, args)
            assert_one_clean_line(r, fragment)


def test_tampered_charlm_checkpoints(tmp_path, good_run):
    """A charlm checkpoint whose parts disagree: one clear line each."""
    run, corpus = good_run
    cases = {}
    ck = torch.load(run / "last.pt", weights_only=True)
    ck["model_config"]["hidden_size"] = 99
    cases["wrong-shapes"] = (ck, "do not match its model config")
    ck = torch.load(run / "last.pt", weights_only=True)
    ck["model_config"]["bogus"] = 1
    cases["unknown-config-field"] = (ck, "invalid model config")
    ck = torch.load(run / "last.pt", weights_only=True)
    ck["tokenizer"] = {"kind": "nonsense"}
    cases["unknown-tokenizer"] = (ck, "tokenizer")
    ck = torch.load(run / "last.pt", weights_only=True)
    del ck["progress"]
    cases["no-progress (resume only)"] = (ck, None)
    for name, (obj, fragment) in cases.items():
        d = tmp_path / name.split()[0]
        d.mkdir()
        torch.save(obj, d / "best.pt")
        torch.save(obj, d / "last.pt")
        if fragment is None:  # still samples; only a resume needs the progress record
            r = runner.invoke(app, ["train", "--out", str(d), "--resume"])
            assert_one_clean_line(r, "cannot resume", "progress")
            continue
        for label in ("sample", "evaluate"):
            r = runner.invoke(app, checkpoint_commands(d, corpus)[label])
            assert_one_clean_line(r, fragment)


def test_a_folder_named_best_pt_and_missing_paths(tmp_path):
    (tmp_path / "run" / "best.pt").mkdir(parents=True)
    r = runner.invoke(app, ["sample", str(tmp_path / "run")])
    assert_one_clean_line(r, "no best.pt or last.pt")
    r = runner.invoke(app, ["sample", str(tmp_path / "nowhere.pt")])
    assert_one_clean_line(r, "does not exist")


def test_only_checkpoint_py_calls_torch_load_and_always_safely():
    """A static guard: no module but checkpoint.py unpickles, and it always passes weights_only=True."""
    for path in PACKAGE.glob("*.py"):
        src = path.read_text(encoding="utf-8")
        assert not re.search(r"\bpickle\.loads?\(|\bUnpickler\(", src), f"{path.name} unpickles"
        calls = re.findall(r"(?<![`\w.])torch\.load\(([^)]*)\)", src)  # not ``torch.load`` in prose
        if path.name != "checkpoint.py":
            assert not calls, f"{path.name} calls torch.load; use checkpoint.load_checkpoint"
        for args in calls:
            assert "weights_only=True" in args, f"{path.name}: torch.load({args})"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.jit.trace/save, used to make the file
def test_torchscript_and_foreign_pickles_get_only_charlm_line_in_a_real_process(tmp_path):
    """A TorchScript file or a plain pickle given as a checkpoint (was: torch's UserWarning about a
    TorchScript archive, or about pickle protocol 4, printed before charlm's line; pytest's own
    warning capture hides them in-process, so these run as real processes)."""
    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    torch.jit.save(torch.jit.trace(Identity(), torch.zeros(1)), tmp_path / "exported.pt")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"x": 1}, protocol=4))
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "OMP_NUM_THREADS": "1"}
    for name, fragment in (("exported.pt", "is a TorchScript file"), ("plain.pkl", "not a charlm checkpoint")):
        for command in ("info", "sample"):
            p = subprocess.run([sys.executable, "-m", "charlm", command, str(tmp_path / name)],
                               capture_output=True, text=True, timeout=120, env=env)
            assert p.returncode == 1 and p.stdout == ""
            assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1, p.stderr
            assert fragment in p.stderr
