"""`charlm export`: the step function (ids, state) -> (logits, state) as ONNX or TorchScript.

Each export is run for 100 steps, one token per call with the state fed back, and compared with
the model reading the same 100 tokens in one forward pass.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charlm.checkpoint import save_checkpoint
from charlm.cli import app
from charlm.config import ModelConfig
from charlm.corpus.tokenizers import CharTokenizer, SentencePieceTokenizer
from charlm.export import export_model, vocab_path
from charlm.model import CharRNN
from helpers import REPO, make_text

runner = CliRunner()
# torch 2.13 marks torch.jit.load deprecated; loading is what a TorchScript user does.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
CELLS = ["rnn", "gru", "lstm"]
MIN_CELLS = ["mingru", "minlstm"]
STEPS = 100


def tiny_model(cell: str, vocab_size: int, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(cell=cell, vocab_size=vocab_size, embedding_size=8, hidden_size=16,
                               layers=2).validate()).eval()


def char_tokenizer() -> CharTokenizer:
    return CharTokenizer(sorted(set(make_text(6000))))


def reference(model: CharRNN, ids: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The model over the whole sequence in one pass: logits (B, T, V) and the final state."""
    with torch.no_grad():
        return model(ids)


def run_steps(step, model: CharRNN, ids: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
    """Call an exported step once per token, feeding its state back: logits (B, T, V), final state."""
    state = [s.numpy() for s in model.init_state(ids.size(0))]
    out = []
    for t in range(ids.size(1)):
        logits, *state = step(ids[:, t:t + 1].numpy(), *state)
        out.append(logits)
    return np.concatenate(out, axis=1), state


def assert_steps_match(step, model: CharRNN, vocab_size: int) -> torch.Tensor:
    """STEPS one-token calls of an exported step, state fed back, equal the model's one pass;
    returns the ids (B, STEPS) it fed."""
    ids = torch.randint(0, vocab_size, (3, STEPS), generator=torch.Generator().manual_seed(1))
    want, want_state = reference(model, ids)
    got, got_state = run_steps(step, model, ids)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
    for g, w in zip(got_state, want_state):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
    return ids


@pytest.mark.parametrize("cell", CELLS + MIN_CELLS)
def test_torchscript_step_matches_the_model_over_100_steps(cell, tmp_path):
    tok = char_tokenizer()
    model = tiny_model(cell, tok.vocab_size)
    path, _ = export_model(model, tok, tmp_path / "m.pt", "torchscript")
    loaded = torch.jit.load(str(path))

    def step(ids, *state):
        with torch.no_grad():
            return [o.numpy() for o in loaded(torch.from_numpy(ids), *map(torch.from_numpy, state))]

    assert_steps_match(step, model, tok.vocab_size)


@pytest.mark.parametrize("cell", CELLS)
def test_onnx_step_matches_the_model_over_100_steps(cell, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    tok = char_tokenizer()
    model = tiny_model(cell, tok.vocab_size)
    path, _ = export_model(model, tok, tmp_path / "m.onnx", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state_in = ["h0", "c0"] if cell == "lstm" else ["h0"]
    assert [i.name for i in session.get_inputs()] == ["ids", *state_in]
    assert [o.name for o in session.get_outputs()] == ["logits", *[n[0] + "n" for n in state_in]]

    def step(ids, *state):
        return session.run(None, {"ids": ids, **dict(zip(state_in, state))})

    ids = assert_steps_match(step, model, tok.vocab_size)
    # Batch and sequence length are free: 2 streams, 7 tokens and then 5, state carried.
    ids = ids[:2, :12]
    first = step(ids[:, :7].numpy(), *[s.numpy() for s in model.init_state(2)])
    second = step(ids[:, 7:].numpy(), *first[1:])
    want, _ = reference(model, ids)
    np.testing.assert_allclose(np.concatenate([first[0], second[0]], axis=1), want.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("cell", MIN_CELLS)
def test_onnx_of_a_min_cell_is_the_one_step_form(cell, tmp_path):
    """minGRU/minLSTM's scan uses logcumsumexp, which ONNX lacks (was: a traceback): the ONNX file is
    MinRNN.step, one token per call, equal to the model's one pass over 100 steps; a longer input
    is refused by the runtime rather than read in part, and the vocabulary says so."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    tok = char_tokenizer()
    model = tiny_model(cell, tok.vocab_size)
    path, vocab = export_model(model, tok, tmp_path / "m.onnx", "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ids", "h0"]

    def step(ids, h0):
        return session.run(None, {"ids": ids, "h0": h0})

    ids = assert_steps_match(step, model, tok.vocab_size)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        step(ids[:, :7].numpy(), model.init_state(3)[0].numpy())
    d = json.loads(vocab.read_text(encoding="utf-8"))
    assert d["inputs"]["ids"] == "(batch, 1) int64" and any("one token per call" in n for n in d["notes"])


def test_vocab_json_for_a_char_tokenizer(tmp_path):
    tok = CharTokenizer(sorted(set("가나다 abc")), normalize="nfd")
    model = tiny_model("lstm", tok.vocab_size)
    path, vocab = export_model(model, tok, tmp_path / "m.pt", "torchscript")
    assert vocab == tmp_path / "m.pt.vocab.json" == vocab_path(path)
    d = json.loads(vocab.read_text(encoding="utf-8"))
    assert d["schema"] == "charlm.vocab/1" and d["model_file"] == "m.pt" and d["format"] == "torchscript"
    assert d["itos"] == tok.itos and d["unk_id"] == 0 and d["itos"][0] == "<unk>"
    assert d["normalize"] == "nfd" and any("NFC" in n for n in d["notes"])
    assert (d["cell"], d["layers"], d["hidden_size"], d["vocab_size"]) == ("lstm", 2, 16, tok.vocab_size)
    assert d["state_inputs"] == ["h0", "c0"] and d["state_outputs"] == ["hn", "cn"]
    assert d["records"] is False and d["record_sep"] is None and "separator_id" not in d


def test_vocab_json_of_a_records_model_names_the_separator(tmp_path):
    """A model trained with --records (was: its vocabulary said nothing of records): the JSON says
    so, names the separator and its id, and says how to start and end a record."""
    tok = CharTokenizer(sorted(set("anna\nbob\n|")))
    model = tiny_model("gru", tok.vocab_size)
    _, vocab = export_model(model, tok, tmp_path / "m.pt", "torchscript", record_sep="|")
    d = json.loads(vocab.read_text(encoding="utf-8"))
    assert d["records"] is True and d["record_sep"] == "|" and d["itos"][d["separator_id"]] == "|"
    assert any("--records" in n and "'|'" in n for n in d["notes"])


def test_vocab_json_carries_the_sentencepiece_model(tmp_path):
    import sentencepiece as spm

    tok = SentencePieceTokenizer.train(iter(make_text(6000).splitlines(True)), "bpe", 300)
    model = tiny_model("gru", tok.vocab_size)
    _, vocab = export_model(model, tok, tmp_path / "m.pt", "torchscript")
    d = json.loads(vocab.read_text(encoding="utf-8"))
    sp = spm.SentencePieceProcessor(model_proto=base64.b64decode(d["sentencepiece_model"]))
    assert sp.encode("the red house") == [int(i) for i in tok.encode("the red house")]
    assert d["itos"] == [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]
    assert d["state_inputs"] == ["h0"]


@pytest.fixture
def run_file(tmp_path) -> Path:
    tok = char_tokenizer()
    model = tiny_model("gru", tok.vocab_size)
    path = tmp_path / "model.pt"
    save_checkpoint({"model_config": asdict(model.config), "model": model.state_dict(),
                     "tokenizer": tok.to_dict()}, path)
    return path


def test_refuses_to_replace_a_file_without_force(run_file, tmp_path):
    out = tmp_path / "x.pt"
    out.write_text("mine")
    result = runner.invoke(app, ["export", str(run_file), "--format", "torchscript", "-o", str(out)])
    assert result.exit_code == 1 and "already exists" in result.output and "--force" in result.output
    assert len(result.output.strip().splitlines()) == 1 and out.read_text() == "mine"
    assert not vocab_path(out).exists()
    vocab_path(tmp_path / "y.pt").write_text("mine too")           # the vocabulary's name is taken
    result = runner.invoke(app, ["export", str(run_file), "--format", "torchscript", "-o", str(tmp_path / "y.pt")])
    assert result.exit_code == 1 and not (tmp_path / "y.pt").exists()
    result = runner.invoke(app, ["export", str(run_file), "--format", "torchscript", "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert torch.jit.load(str(out)) is not None and json.loads(vocab_path(out).read_text())["format"] == "torchscript"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "x.pt", "x.pt.vocab.json", "y.pt.vocab.json"]


def test_bad_format_and_missing_onnx(run_file, tmp_path, monkeypatch):
    bad = runner.invoke(app, ["export", str(run_file), "--format", "tflite", "-o", str(tmp_path / "m")])
    assert bad.exit_code == 1 and "onnx, torchscript" in bad.output
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    missing = runner.invoke(app, ["export", str(run_file), "-o", str(tmp_path / "m.onnx")])
    assert missing.exit_code == 1 and "pip install" in missing.output
    assert not (tmp_path / "m.onnx").exists()


def test_help_lists_score_and_export():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert " score " in result.output and " export " in result.output


# The README's example, word for word but for the prime: it samples from the ONNX file with numpy
# and onnxruntime alone.
README_SNIPPET = '''\
import json, numpy as np, onnxruntime as ort

vocab = json.load(open("model.onnx.vocab.json", encoding="utf-8"))
itos = vocab["itos"]; stoi = {c: i for i, c in enumerate(itos)}
session = ort.InferenceSession("model.onnx")
state = {n: np.zeros((vocab["layers"], 1, vocab["hidden_size"]), np.float32) for n in vocab["state_inputs"]}
text, rng = "ROMEO:", np.random.default_rng(1)
ids = np.array([[stoi[c] for c in text]])
for _ in range(200):
    logits, *new_state = session.run(None, {"ids": ids, **state})
    state = dict(zip(vocab["state_inputs"], new_state))
    p = np.exp((logits[0, -1] - logits[0, -1].max()) / 0.8); p[0] = 0  # temperature 0.8, never <unk>
    ids = np.array([[rng.choice(len(p), p=p / p.sum())]])
    text += itos[ids[0, 0]]
print(text)
'''


def snippet_in_torch(model: CharRNN, itos: list[str], prime: str) -> str:
    """The README snippet's loop with the charlm model in its place: the same draws, the same text."""
    stoi = {c: i for i, c in enumerate(itos)}
    text, rng, state = prime, np.random.default_rng(1), None
    ids = torch.tensor([[stoi[c] for c in text]])
    with torch.no_grad():
        for _ in range(200):
            logits, state = model(ids, state)
            last = logits[0, -1].numpy()
            p = np.exp((last - last.max()) / 0.8)
            p[0] = 0
            ids = torch.tensor([[rng.choice(len(p), p=p / p.sum())]])
            text += itos[int(ids[0, 0])]
    return text


def test_readme_snippet_samples_from_the_onnx_file_without_charlm(run_file, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    export = subprocess.run([sys.executable, "-m", "charlm", "export", str(run_file), "-o",
                             str(tmp_path / "model.onnx")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert export.returncode == 0, export.stderr
    assert "model.onnx.vocab.json" in export.stdout
    (tmp_path / "snippet.py").write_text(README_SNIPPET.replace('"ROMEO:"', '"the cat"'), encoding="utf-8")
    # charlm is made unimportable in the snippet's process: it must not need it.
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.modules['charlm'] = None; "
                           "exec(open('snippet.py', encoding='utf-8').read())"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import charlm

    lm = charlm.load(run_file, device="cpu")
    assert proc.stdout == snippet_in_torch(lm.model, lm.tokenizer.itos, "the cat") + "\n"


@pytest.mark.parametrize("target", ["fifo", "link", "folder", "device", "run-best", "run-last", "run-data"])
def test_force_replaces_only_regular_files_outside_charlm_runs(run_file, tmp_path, target):
    """--force never replaces a device (root once turned /dev/null into a file), a FIFO, a folder,
    a link, or a file charlm owns in a run folder (the run's own best.pt); one line, nothing written.
    The device is a null device made in tmp_path, never the real /dev/null: a regression must not
    break the machine it runs on."""
    import os
    import shutil
    import stat

    from charlm.rundir import write_marker

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    write_marker(run, "a" * 32)
    shutil.copy(run_file, run / "best.pt")
    (tmp_path / "mine.pt").write_text("mine")
    out = {"fifo": tmp_path / "pipe", "link": tmp_path / "link.pt", "folder": tmp_path / "dir",
           "device": tmp_path / "null", "run-best": run / "best.pt", "run-last": run / "last.pt",
           "run-data": run / "data" / "train.bin"}[target]
    if target == "fifo":
        os.mkfifo(out)
    elif target == "link":
        out.symlink_to(tmp_path / "mine.pt")
    elif target == "folder":
        out.mkdir()
    elif target == "device":
        try:
            os.mknod(out, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except OSError:
            pytest.skip("making a device file needs root (CAP_MKNOD)")
    before = {p: (os.lstat(p).st_mode, p.read_bytes() if stat.S_ISREG(os.lstat(p).st_mode) else None)
              for p in [out, run / "best.pt", tmp_path / "mine.pt"] if os.path.lexists(p)}
    result = runner.invoke(app, ["export", str(run / "best.pt"), "--format", "torchscript", "-o", str(out), "--force"])
    assert result.exit_code == 1, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    after = {p: (os.lstat(p).st_mode, p.read_bytes() if v[1] is not None else None) for p, v in before.items()}
    assert after == before and not vocab_path(out).exists()
    assert not (run / "last.pt").exists() and not (run / "data" / "train.bin").exists()


@pytest.mark.parametrize("fail_at", ["model", "vocab", "rename"])
def test_a_failed_export_leaves_no_file_and_no_half_pair(run_file, tmp_path, monkeypatch, fail_at):
    """A full disk while writing the model, its vocabulary, or a failing last rename (was: the model
    written and its vocabulary not, a half pair; then, for the last rename, the old model lost):
    one line, and the folder holds what it held, with --force the old pair unchanged."""
    import os

    import charlm.export as export

    out = tmp_path / "x.pt"
    out.write_text("old model")
    vocab_path(out).write_text("old vocab")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if fail_at == "model":
        monkeypatch.setattr(export, "_write_torchscript", full)
    elif fail_at == "vocab":
        monkeypatch.setattr(Path, "write_text", full)
    else:
        real = os.replace
        monkeypatch.setattr(export.os, "replace",
                            lambda a, b: full() if str(b).endswith(".vocab.json") else real(a, b))
    result = runner.invoke(app, ["export", str(run_file), "--format", "torchscript", "-o", str(out), "--force"])
    assert result.exit_code == 1 and "No space left on device" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before           # the old pair as it was (the old model set aside, then put back)
