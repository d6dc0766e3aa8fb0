"""Property-based tests: hostile checkpoints, metrics.jsonl lines and run folders.

Hypothesis takes one real tiny checkpoint (trained once per module), changes one entry per example
(drops it, gives it another type, or another size), saves it with torch.save, and runs
`charlm info`, `charlm sample --length 5` and `charlm evaluate` on it. Likewise for the lines of a
metrics.jsonl and the config.toml of run folders under `charlm runs` and `charlm plot`. Every
example must end with exit 0, 1 or 2, at most one line on stderr, no traceback, and change no file
but those the example wrote. A few dozen examples run in the default suite; `pytest -m slow` runs
many more. The examples are derandomised, so a failure here reproduces.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

import charlm
from charlm.cli import app
from charlm.config import ModelConfig, TrainConfig
from charlm.errors import CharLMError
from charlm.training import train
from helpers import make_text

runner = CliRunner()

FAST = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=int(os.environ.get("CHARLM_SLOW_EXAMPLES", "600")), deadline=None, database=None, suppress_health_check=list(HealthCheck))

try:
    import matplotlib  # noqa: F401
    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Any]:
    """One tiny trained run: its folder, corpus and last.pt as a dict (never changed by a test)."""
    root = tmp_path_factory.mktemp("hostile")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(1500), encoding="utf-8")
    run = root / "run"
    train(TrainConfig(corpus=str(corpus), out=str(run), batch_size=4, seq_len=8, max_steps=4,
                      eval_every=2, device="cpu", sample_length=0, warmup_steps=0),
          ModelConfig(cell="lstm", hidden_size=8, embedding_size=8))
    ckpt = torch.load(run / "last.pt", weights_only=True)
    return {"root": root, "run": run, "corpus": corpus, "ckpt": ckpt, "hashes": tree_hashes(root)}


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clean(result, label: str) -> None:
    """Exit 0, 1 or 2, no traceback, at most one line on stderr."""
    where = f"{label}: exit {result.exit_code}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback
        tb = "".join(traceback.format_exception(result.exception))
        pytest.fail(f"{where}\nraised {type(result.exception).__name__}: {result.exception}\n{tb[-3000:]}")
    assert result.exit_code in (0, 1, 2), where
    assert "Traceback" not in result.output, where
    assert len(result.stderr.strip().splitlines()) <= 1, where


# ---------------------------------------------------------------------------------------------
# Checkpoint mutations: a path into the dict, and what happens there.

def entry_paths(value: Any, prefix: tuple = (), depth: int = 3) -> list[tuple]:
    """Every key of the checkpoint down to `depth` levels (lists: their first two and last items)."""
    out = []
    if depth == 0:
        return out
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list) and value:
        items = [(i, value[i]) for i in sorted({0, min(1, len(value) - 1), len(value) - 1})]
    else:
        return out
    for key, child in items:
        out.append(prefix + (key,))
        out.extend(entry_paths(child, prefix + (key,), depth - 1))
    return out


def other_values() -> st.SearchStrategy:
    """A value of any type a weights_only checkpoint can hold."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.sampled_from([0, -1, 1, 2**31, 2**63, 10**6, 10**8]),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                        st.binary(max_size=12), st.sampled_from(["[/bold]", "\x00", "lstm", "char", "a" * 5000]))
    tensors = st.builds(lambda shape, dtype, fill: torch.full(shape, fill).to(dtype),
                        st.lists(st.integers(0, 3), max_size=3).map(tuple),
                        st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool, torch.float64]),
                        st.sampled_from([0.0, 1.0, math.nan, math.inf, -1e30]))
    return st.one_of(scalars, tensors, st.lists(scalars, max_size=3),
                     st.dictionaries(st.text(max_size=5), scalars, max_size=3))


def resized(value: Any) -> st.SearchStrategy:
    """The same type, another size."""
    if isinstance(value, bool):
        return st.just(not value)
    if isinstance(value, int):
        return st.sampled_from([0, -1, value + 1, value * 1000, 10**6, 10**8, 2**62])
    if isinstance(value, float):
        return st.sampled_from([0.0, -value, value * 1e6, math.nan, math.inf, 1e308])
    if isinstance(value, torch.Tensor):
        v = value
        options = [v.flatten(), v.new_zeros((0,))]
        if v.is_floating_point():
            options += [torch.full_like(v, math.nan), torch.full_like(v, math.inf), v * 1e30]
        else:                     # the RNG states are uint8
            options += [v.to(torch.float32), torch.full_like(v, 255 if v.dtype == torch.uint8 else -1)]
        if v.dim() >= 1 and v.numel():
            options += [v[:-1], torch.cat([v, v[:1]]), v.t() if v.dim() == 2 else v[None]]
            options.append(v.flatten()[:1].expand(4096, *v.shape[1:]) if v.dim() >= 1 else v)
        return st.sampled_from(options)
    if isinstance(value, (list, str, bytes)):
        return st.sampled_from([value[:0], value[:1], value[:-1], value * 2, value[::-1]])
    if isinstance(value, dict):
        return st.just({})
    return other_values()


def apply(ckpt: dict, path: tuple, action: str, value: Any) -> dict:
    out = copy.deepcopy(ckpt)
    holder = out
    for key in path[:-1]:
        holder = holder[key]
    if action == "drop":
        if isinstance(holder, dict):
            del holder[path[-1]]
        else:
            holder.pop(path[-1])
    else:
        holder[path[-1]] = value
    return out


def value_at(ckpt: dict, path: tuple) -> Any:
    for key in path:
        ckpt = ckpt[key]
    return ckpt


@st.composite
def mutations(draw, ckpt: dict):
    path = draw(st.sampled_from(entry_paths(ckpt)))
    action = draw(st.sampled_from(["drop", "retype", "resize"]))
    if action == "drop":
        return path, "drop", None
    value = draw(other_values() if action == "retype" else resized(value_at(ckpt, path)))
    return path, "set", value


def run_checkpoint_commands(base: dict, ckpt: dict, monkeypatch, extra: tuple = ()) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        monkeypatch.chdir(tmp)
        path = tmp / "hostile.pt"
        torch.save(ckpt, path)
        before = path.read_bytes()
        for args in (["info", str(path)], ["info", str(path), "--json", "-"],
                     ["sample", str(path), "--length", "5", "--seed", "1"],
                     ["evaluate", str(path), str(base["corpus"]), "--device", "cpu"], *extra):
            assert_clean(runner.invoke(app, args), " ".join(args[:1]))
        assert sorted(p.name for p in tmp.iterdir()) == ["hostile.pt"], "a command wrote a file"
        assert path.read_bytes() == before
    assert tree_hashes(base["root"]) == base["hashes"]


def test_the_unmutated_checkpoint_works(base, monkeypatch):
    run_checkpoint_commands(base, base["ckpt"], monkeypatch)
    r = runner.invoke(app, ["sample", str(base["run"] / "last.pt"), "--length", "5", "--seed", "1"])
    assert r.exit_code == 0 and len(r.stdout) >= 5


@FAST
@given(data=st.data())
def test_mutated_checkpoints(base, monkeypatch, data):
    path, action, value = data.draw(mutations(base["ckpt"]))
    run_checkpoint_commands(base, apply(base["ckpt"], path, action, value), monkeypatch)


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_mutated_checkpoints_many(base, monkeypatch, data):
    path, action, value = data.draw(mutations(base["ckpt"]))
    run_checkpoint_commands(base, apply(base["ckpt"], path, action, value), monkeypatch)


@pytest.mark.parametrize("path, value, fragment", [
    (("model_config", "hidden_size"), 20000, "do not match its model config"),
    (("model_config", "vocab_size"), 10**8, "do not match its model config"),
    (("model_config", "layers"), 100000, "do not match its model config"),
    (("model_config", "layers"), 10**6, "do not match its model config"),
    (("model_config", "embedding_size"), 10**11, "do not match its model config"),
    (("model", "embed.weight"), "expand", "declares"),
    (("model", "rnn.weight_hh_l0"), math.nan, "weights are not finite"),
    (("model", "head.bias"), math.inf, "weights are not finite"),
    (("tokenizer", "chars"), "short", "tokenizer has"),
    (("tokenizer", "normalize"), "NFX", "normalize"),
])
def test_edited_sizes_and_values_are_refused_before_building(base, tmp_path, path, value, fragment):
    """Issue 14 §3/§5: edited metadata is checked against the stored weights, no allocation first."""
    ck = copy.deepcopy(base["ckpt"])
    holder = value_at(ck, path[:-1])
    if value == "expand":       # 10**8 x 8 floats declared over one stored number (stride 0)
        holder[path[-1]] = torch.zeros(1).expand(10**8, 8)
    elif value == "short":
        holder[path[-1]] = holder[path[-1]][:3]
    elif isinstance(value, float):
        holder[path[-1]] = holder[path[-1]].clone().fill_(value)
    else:
        holder[path[-1]] = value
    torch.save(ck, tmp_path / "edited.pt")
    for args in (["sample", str(tmp_path / "edited.pt"), "--length", "5"],
                 ["evaluate", str(tmp_path / "edited.pt"), str(base["corpus"]), "--device", "cpu"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and fragment in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output


def test_info_on_a_minimal_checkpoint_shows_dashes(base, tmp_path):
    ck = {k: base["ckpt"][k] for k in ("format", "format_version", "model_config", "model", "tokenizer")}
    torch.save(ck, tmp_path / "minimal.pt")
    r = runner.invoke(app, ["info", str(tmp_path / "minimal.pt")])
    assert r.exit_code == 0, r.output
    assert "step" in r.stdout and "-" in r.stdout
    d = json.loads(runner.invoke(app, ["info", str(tmp_path / "minimal.pt"), "--json", "-"]).stdout)
    assert d["step"] is None and d["best_val_loss"] is None and d["model"] == "lstm"


# ---------------------------------------------------------------------------------------------
# metrics.jsonl lines and run folders.

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
FIELDS = ["type", "step", "elapsed", "loss", "val_loss", "val_bpc", "model", "corpus", "reason", "tokens_per_s"]


def mutated_line(line: str) -> st.SearchStrategy:
    """A damaged version of one metrics line: another JSON value, raw bytes, or one field retyped."""
    rec = json.loads(line)
    retyped = st.builds(lambda k, v: json.dumps({**rec, k: v}, allow_nan=True).encode(),
                        st.sampled_from(FIELDS), JSON)
    dropped = st.sampled_from(sorted(rec)).map(lambda k: json.dumps({x: y for x, y in rec.items() if x != k}).encode())
    return st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40), retyped, dropped,
                     st.just(b"[" * 100000), st.just(line.encode()[: len(line) // 2]))


@st.composite
def damaged_run(draw, lines: list[str]):
    idx = draw(st.lists(st.integers(0, len(lines) - 1), min_size=1, max_size=3, unique=True))
    out = [line.encode() for line in lines]
    for i in idx:
        out[i] = draw(mutated_line(lines[i]))
    config = draw(st.one_of(st.none(), st.binary(max_size=60), st.text(max_size=60).map(str.encode),
                            st.just(b'[model]\nmodel = [1, 2]\nlayers = {a = 1}\n[train]\ncorpus = 3\n')))
    return b"\n".join(out) + b"\n", config


def run_folder_commands(base: dict, metrics: bytes, config, monkeypatch, plot: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        monkeypatch.chdir(tmp)
        run = tmp / "runs" / "damaged"
        shutil.copytree(base["run"], run)
        (run / "metrics.jsonl").write_bytes(metrics)
        if config is not None:
            (run / "config.toml").write_bytes(config)
        before = tree_hashes(tmp)
        for args in (["runs", str(tmp / "runs")], ["runs", str(tmp / "runs"), "--json", "-"]):
            r = runner.invoke(app, args)
            assert_clean(r, "runs")
            assert r.exit_code == 0, r.output       # a damaged run is listed, never fatal
        if plot:
            r = runner.invoke(app, ["plot", str(run), "-o", str(tmp / "curves.png")])
            assert_clean(r, "plot")
            (tmp / "curves.png").unlink(missing_ok=True)
        assert tree_hashes(tmp) == before
    assert tree_hashes(base["root"]) == base["hashes"]


@FAST
@given(data=st.data())
def test_damaged_metrics_and_configs(base, monkeypatch, data):
    lines = (base["run"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    metrics, config = data.draw(damaged_run(lines))
    run_folder_commands(base, metrics, config, monkeypatch, plot=False)


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib (the plot extra) is not installed")
@settings(FAST, max_examples=2)
@given(data=st.data())
def test_damaged_metrics_plot(base, monkeypatch, data):
    lines = (base["run"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    metrics, config = data.draw(damaged_run(lines))
    run_folder_commands(base, metrics, config, monkeypatch, plot=True)


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_damaged_metrics_and_configs_many(base, monkeypatch, data):
    lines = (base["run"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    metrics, config = data.draw(damaged_run(lines))
    run_folder_commands(base, metrics, config, monkeypatch, plot=HAVE_MATPLOTLIB and data.draw(st.integers(0, 9)) == 0)


def test_runs_says_what_it_skipped(base, tmp_path):
    run = tmp_path / "runs" / "r"
    shutil.copytree(base["run"], run)
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b"[1, 2]\n\xff\xfe binary\n")
    (run / "config.toml").write_bytes(b"\x00\x01\xff")
    r = runner.invoke(app, ["runs", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())       # however the terminal wraps it
    assert "note: r: config.toml is not valid TOML, ignored; 2 damaged lines of metrics.jsonl skipped" in text
    [summary] = json.loads(runner.invoke(app, ["runs", str(tmp_path / "runs"), "--json", "-"]).stdout)["runs"]
    assert summary["best_val_loss"] is not None and summary["notes"]


# ---------------------------------------------------------------------------------------------
# The Python API's inputs.

def test_api_inputs_are_checked(base):
    with pytest.raises(CharLMError, match="load\\(\\) takes"):
        charlm.load(None)
    lm = charlm.load(base["run"], device="cpu")
    with pytest.raises(CharLMError, match="tail must be"):
        lm.evaluate_file(base["corpus"], tail=math.nan)
    with pytest.raises(CharLMError, match="takes the text as a str"):
        lm.evaluate(123)
    with pytest.raises(CharLMError, match="at least two are needed"):
        lm.evaluate("t")
    assert math.isfinite(lm.evaluate_file(base["corpus"], tail=0.5).loss)


def test_strings_from_files_are_shown_as_text_not_markup(base, tmp_path):
    """Rich reads '[/bold]' as a closing tag: a corpus or model name from a file must not be markup."""
    ck = copy.deepcopy(base["ckpt"])
    ck["corpus"]["name"] = "[/bold]"
    torch.save(ck, tmp_path / "markup.pt")
    r = runner.invoke(app, ["info", str(tmp_path / "markup.pt")])
    assert r.exit_code == 0 and "[/bold]" in r.stdout, r.output
    run = tmp_path / "runs" / "[x]"
    shutil.copytree(base["run"], run)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"type": "start", "model": "[/x]", "corpus": "[red]"}) + "\n")
    r = runner.invoke(app, ["runs", str(tmp_path / "runs")])
    assert r.exit_code == 0 and "[/x]" in r.stdout, r.output
