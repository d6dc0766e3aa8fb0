"""`charlm plot` (matplotlib curves from metrics.jsonl) and `charlm train --tensorboard`."""

import importlib.util
import json
import sys

import pytest
from typer.testing import CliRunner

import charlm
from charlm.cli import app
from charlm.errors import MissingExtra
from charlm.events import GradientReport
from helpers import TINY

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(folder, n_steps=30, seed=0.0):
    """A run directory with a plausible metrics.jsonl: chunks every step, evaluations every 10."""
    folder.mkdir(parents=True)
    lines = [{"type": "start", "model": "lstm 1x16", "corpus": "x.txt"}]
    for step in range(1, n_steps + 1):
        lines.append({"type": "chunk", "step": step, "epoch": 0, "loss": 3.0 - step * 0.05 + seed,
                      "grad_norm": 1.0, "clipped": False, "lr": 1e-3, "tokens": step * 64,
                      "elapsed": step * 0.5, "tokens_per_s": 128.0, "skipped": False})
        if step % 10 == 0:
            lines.append({"type": "eval", "step": step, "train_loss": 2.9 - step * 0.05, "val_loss": 3.0 - step * 0.04,
                          "val_bpc": (3.0 - step * 0.04) / 0.693, "elapsed": step * 0.5, "best": True})
    lines.append({"type": "chunk", "step": n_steps + 1, "loss": "nan", "skipped": True, "elapsed": 99.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_plot_several_runs_on_one_chart(tmp_path):
    pytest.importorskip("matplotlib")
    a, b = fake_run(tmp_path / "lstm"), fake_run(tmp_path / "gru", seed=0.2)
    out = tmp_path / "figs" / "curves.png"
    result = runner.invoke(app, ["plot", str(a), str(b), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000  # four panels of real drawing

    svg = tmp_path / "curves.svg"
    assert runner.invoke(app, ["plot", str(a), "-o", str(svg), "--title", "one run"]).exit_code == 0
    text = svg.read_text()
    assert "one run" in text and "lstm (lstm 1x16) val" in text and "wall time (s)" in text and "bits per character" in text


def test_plot_series_from_metrics(tmp_path):
    from charlm.plotting import load_curves

    curves = load_curves(fake_run(tmp_path / "r", n_steps=20))
    assert [c[0] for c in curves["chunk"]] == list(range(1, 21))  # the skipped NaN step is left out
    assert [e[0] for e in curves["eval"]] == [10, 20]


def test_plot_errors(tmp_path, monkeypatch):
    from charlm.errors import RunDirError
    from charlm.plotting import load_curves

    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="no metrics.jsonl"):   # needs no extra
        load_curves(tmp_path / "empty")
    if importlib.util.find_spec("matplotlib") is not None:   # else the extra is what is missing
        result = runner.invoke(app, ["plot", str(tmp_path / "empty"), "-o", str(tmp_path / "x.png")])
        assert result.exit_code == 1 and "no metrics.jsonl" in result.stderr
    # matplotlib not installed: one line saying which extra to install
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = runner.invoke(app, ["plot", str(fake_run(tmp_path / "r")), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "charlm[plot]" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_tensorboard_event_files(tmp_path, corpus_file):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(corpus_file), *TINY, "--max-steps", "6", "--eval-every", "3",
                                 "--out", str(out), "--tensorboard"])
    assert result.exit_code == 0, result.output
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/chunk_loss", "train/grad_norm", "train/lr", "val/loss", "val/bits_per_char"} <= tags
    assert [e.step for e in acc.Scalars("train/chunk_loss")] == list(range(1, 7))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in metrics if r["type"] == "eval"]
    assert [e.step for e in acc.Scalars("val/loss")] == [r["step"] for r in evals] == [3, 6]
    assert acc.Scalars("val/loss")[-1].value == pytest.approx(evals[-1]["val_loss"], rel=1e-6)


def test_tensorboard_gradient_horizons(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from charlm.tb import TensorBoardSink

    sink = TensorBoardSink(tmp_path)
    sink(GradientReport(step=5, horizons={"vanish_lag": 12, "ratio": {"10": 0.5, "20": float("nan")}, "note": "x"}))
    sink.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"grad_horizon/vanish_lag", "grad_horizon/ratio/10"}
    assert acc.Scalars("grad_horizon/vanish_lag")[0].value == 12


def test_tensorboard_missing_is_a_clear_error_before_anything_is_written(tmp_path, corpus_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    with pytest.raises(MissingExtra, match=r"charlm\[tensorboard\]"):
        charlm.train(charlm.TrainConfig(corpus=str(corpus_file), out=str(out), max_steps=2, tensorboard=True))
    assert not out.exists()
    result = runner.invoke(app, ["train", str(corpus_file), *TINY, "--max-steps", "2", "--out", str(out),
                                 "--tensorboard"])
    assert result.exit_code == 1 and "pip install" in result.stderr and not out.exists()


def test_plot_names_each_run_and_model_and_prints_a_relative_path(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from charlm.plotting import _label, load_curves

    run = fake_run(tmp_path / "lstm")
    assert _label(load_curves(run)) == "lstm (lstm 1x16)"
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["plot", str(run), "-o", str(tmp_path / "figs" / "c.svg")])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "figs/c.svg"                  # below the current folder: relative
    assert "lstm (lstm 1x16)" in (tmp_path / "figs" / "c.svg").read_text()
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.svg"
    r = runner.invoke(app, ["plot", str(run), "-o", str(outside)])
    assert r.stdout.strip() == str(outside)                  # not below it: as given
    outside.unlink()


@pytest.mark.parametrize("command", [
    ["sweep", "{corpus}", "--grid", "seq_len=8,16", "--max-steps", "1", "--out", "{tmp}/sweep"],
    ["inspect-gradients", "--models", "rnn", "--hidden-size", "8", "--lags", "4", "--samples", "2"],
])
def test_every_plotting_command_checks_its_image_and_extra_before_any_work(tmp_path, corpus_file, monkeypatch, command):
    """One check for every --plot: a bad file name, a folder or a missing matplotlib is one line
    before the first sweep point or measurement (nothing is written)."""
    command = [c.format(corpus=corpus_file, tmp=tmp_path) for c in command]
    (tmp_path / "folder.png").mkdir()
    for plot, message in ((tmp_path / "out.txt", "must end in .png, .svg or .pdf"),
                          (tmp_path / "folder.png", "is a folder")):
        result = runner.invoke(app, [*command, "--plot", str(plot)])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "sweep").exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = runner.invoke(app, [*command, "--plot", str(tmp_path / "g.png")])
    assert result.exit_code != 0 and "pip install 'charlm[plot]'" in result.output, result.output
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "g.png").exists()
