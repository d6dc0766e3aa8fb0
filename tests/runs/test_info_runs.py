"""`charlm info` (what is inside a checkpoint) and `charlm runs` (run directories at a glance)."""

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import charlm
from charlm.checkpoint import load_checkpoint
from charlm.cli import app
from charlm.devices import resolve_precision
from charlm.util import RUN_MARKER
from helpers import make_text

runner = CliRunner()


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """One real tiny run (trained through the Python API) and one run known only by its metrics."""
    root = tmp_path_factory.mktemp("runs")
    corpus = root.parent / "info-corpus.txt"
    corpus.write_text(make_text(6000), encoding="utf-8")
    charlm.train({"corpus": str(corpus), "out": str(root / "lstm"), "model": "lstm", "hidden_size": 16, "embedding_size": 8,
                  "batch_size": 4, "seq_len": 16, "max_steps": 12, "eval_every": 5, "warmup_steps": 0,
                  "sample_length": 0})
    other = root / "group" / "gru"  # a nested run: `runs` looks one level down too
    other.mkdir(parents=True)
    (other / "config.toml").write_text('[model]\nmodel = "gru"\nhidden_size = 64\nlayers = 2\n[train]\ncorpus = "x.txt"\n')
    records = [{"type": "start", "model": "gru 2x64", "corpus": "x.txt"},
               {"type": "chunk", "step": 10, "elapsed": 3.0, "loss": 2.0, "tokens_per_s": 100.0},
               {"type": "eval", "step": 10, "train_loss": 2.0, "val_loss": 1.9, "val_bpc": 2.74, "elapsed": 3.0, "best": True},
               {"type": "chunk", "step": 20, "elapsed": 6.0, "loss": 1.8, "tokens_per_s": 100.0},
               {"type": "eval", "step": 20, "train_loss": 1.8, "val_loss": 1.95, "val_bpc": 2.81, "elapsed": 6.0, "best": False}]
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"type": "chu')
    (root / "notes").mkdir()  # not a run: skipped
    return root


def test_info_json_has_everything(runs_root):
    result = runner.invoke(app, ["info", str(runs_root / "lstm"), "--json", "-"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["schema"] == "charlm.info/1"
    ckpt = load_checkpoint(runs_root / "lstm" / "best.pt")
    assert d["checkpoint"].endswith("best.pt")
    assert (d["model"], d["layers"], d["hidden_size"], d["embedding_size"]) == ("lstm", 1, 16, 8)
    assert d["parameters"] == sum(v.numel() for v in ckpt["model"].values()) > 0
    assert d["tokenizer"] == "char" and d["vocab_size"] == len(ckpt["tokenizer"]["chars"])
    assert d["vocab_size"] >= len(set(make_text(6000)))  # the corpus's characters (and <unk>)
    assert d["step"] == ckpt["progress"]["step"] and d["tokens_seen"] == d["step"] * 4 * 16
    assert math.isclose(d["best_val_loss"], ckpt["progress"]["best_val_loss"])
    assert 0 < d["best_val_bpc"] < 8
    assert d["corpus"].endswith("info-corpus.txt") and len(d["corpus_sha256"]) == 64
    assert (d["device"], d["precision"]) == ("cpu", resolve_precision(torch.device("cpu"), "auto"))
    assert d["charlm_version"] == charlm.__version__ and d["torch_version"] == str(torch.__version__)
    last = json.loads(runner.invoke(app, ["info", str(runs_root / "lstm" / "last.pt"), "--json", "-"]).stdout)
    assert last["step"] == 12 and last["checkpoint"].endswith("last.pt")


def test_info_table(runs_root):
    result = runner.invoke(app, ["info", str(runs_root / "lstm")], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for fragment in ("lstm 1x16", "parameters", "char, vocabulary", "best val bits/char", "corpus sha256",
                     f"cpu, {resolve_precision(torch.device('cpu'), 'auto')}", f"charlm {charlm.__version__}",
                     "torch "):
        assert fragment in result.stdout, fragment


def test_info_refuses_what_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["info", str(junk)])
    assert result.exit_code == 1 and "not a" in result.stderr and "charlm checkpoint" in result.stderr
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 1 and "no best.pt or last.pt" in result.stderr


def test_runs_lists_best_figures(runs_root):
    result = runner.invoke(app, ["runs", str(runs_root), "--json", "-"])
    assert result.exit_code == 0, result.output
    rows = {r["run"].replace("\\", "/").split("runs")[-1].lstrip("0123456789/"): r for r in json.loads(result.stdout)["runs"]}
    assert set(rows) == {"lstm", "group/gru"}
    lstm, gru = rows["lstm"], rows["group/gru"]
    ckpt = load_checkpoint(runs_root / "lstm" / "last.pt")
    assert math.isclose(lstm["best_val_loss"], ckpt["progress"]["best_val_loss"])
    assert lstm["step"] == 12 and lstm["model"] == "lstm 1x16" and lstm["status"] == "max_steps"
    # the best evaluation, not the last one; a torn last line is ignored
    assert (gru["best_val_loss"], gru["best_val_bpc"], gru["best_step"], gru["step"]) == (1.9, 2.74, 10, 20)
    table = runner.invoke(app, ["runs", str(runs_root)])
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)  # fits a standard terminal
    assert any(line.lstrip().startswith("lstm ") and "lstm 1x16" in line and "done" in line for line in lines)
    assert any("group/gru" in line and "1.9000" in line and "2.7400" in line and "running?" in line for line in lines)


def fake_run(folder, name="a-fairly-long-experiment-name", marker=True):
    """A run known by its marker and metrics only, with a long name and long figures."""
    folder.mkdir(parents=True)
    if marker:
        (folder / RUN_MARKER).write_text(json.dumps({"run_id": "x", "created": 0}))
    records = [{"type": "start", "model": "minlstm 3x1024", "corpus": "a-very-long-corpus-file-name.txt"},
               {"type": "chunk", "step": 123456, "elapsed": 98765.0, "loss": 2.0, "tokens_per_s": 100.0},
               {"type": "eval", "step": 123456, "train_loss": 2.0, "val_loss": 2.8612345, "val_bpc": 4.1278,
                "elapsed": 98765.0, "best": True}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_runs_at_80_columns_drops_whole_columns_never_cuts_a_number(tmp_path):
    for i in range(3):
        fake_run(tmp_path / f"a-fairly-long-experiment-name-{i}")
    r = runner.invoke(app, ["runs", str(tmp_path)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), r.stdout
    assert "…" not in r.stdout
    rows = [line for line in lines if line.lstrip().startswith("a-fairly-long-experiment-name-")]
    assert len(rows) == 3 and all("2.8612" in row and "123,456" in row for row in rows), r.stdout
    assert "left out for width:" in r.stdout
    wide = runner.invoke(app, ["runs", str(tmp_path)], env={"COLUMNS": "200"})
    assert "left out" not in wide.stdout and "a-very-long-corpus-file-name.txt" in wide.stdout


def test_runs_without_a_folder_also_finds_marked_subfolders(tmp_path, monkeypatch):
    fake_run(tmp_path / "runs" / "in-runs")
    fake_run(tmp_path / "by-out")                      # `charlm train --out by-out`
    fake_run(tmp_path / "stranger", marker=False)      # not marked: not looked at outside runs/
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["runs", "--json", "-"])
    assert r.exit_code == 0, r.output
    assert sorted(Path(x["run"]).name for x in json.loads(r.stdout)["runs"]) == ["by-out", "in-runs"]
    r = runner.invoke(app, ["runs"], env={"COLUMNS": "100"})
    assert "runs/ and the subfolders of the current folder" in " ".join(r.stdout.split())
    assert "in-runs" in r.stdout and "by-out" in r.stdout
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    r = runner.invoke(app, ["runs"])
    assert r.exit_code == 0 and "no run directories in runs/ (absent)" in r.stdout


def test_runs_errors_and_empty(tmp_path):
    result = runner.invoke(app, ["runs", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "does not exist" in result.stderr
    result = runner.invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 0 and "no run directories" in result.stdout


def test_permission_errors_are_one_line(runs_root, tmp_path, monkeypatch):
    """Issue 14 §6: unreadable folders and files (simulated: the tests may run as root, which
    reads anything) give one line, or are passed over in a listing."""
    import builtins
    import pathlib

    import charlm.metrics

    real_iterdir, real_open = pathlib.Path.iterdir, builtins.open

    def no_listing(self):
        if self.name in ("locked", "group"):
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)

    def no_reading(path, *args, **kwargs):
        if str(path).endswith("metrics.jsonl"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "iterdir", no_listing)
    (tmp_path / "locked").mkdir()
    r = runner.invoke(app, ["runs", str(tmp_path / "locked")])
    assert r.exit_code == 1 and "Permission denied" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["runs", str(runs_root)])          # group/ unreadable: the rest is listed
    assert r.exit_code == 0 and "lstm" in r.stdout and "group" not in r.stdout
    monkeypatch.setattr(charlm.metrics, "open", no_reading, raising=False)
    r = runner.invoke(app, ["runs", str(runs_root), "--json", "-"])
    [lstm] = [s for s in json.loads(r.stdout)["runs"] if s["run"].endswith("lstm")]
    assert "metrics.jsonl unreadable (Permission denied)" in lstm["notes"]
    pytest.importorskip("matplotlib")
    r = runner.invoke(app, ["plot", str(runs_root / "lstm"), "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 1 and "Permission denied" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_info_on_a_folder_that_may_not_be_searched(tmp_path, monkeypatch):
    import pathlib

    real_is_dir = pathlib.Path.is_dir

    def refusing(self):
        if "locked" in self.parts:
            raise PermissionError(13, "Permission denied")
        return real_is_dir(self)

    monkeypatch.setattr(pathlib.Path, "is_dir", refusing)
    for args in (["info", str(tmp_path / "locked" / "best.pt")], ["sample", str(tmp_path / "locked")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and "cannot read checkpoint" in r.stderr and "Permission denied" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
