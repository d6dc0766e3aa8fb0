"""Export a trained model's step function, to run without charlm (ONNX or TorchScript).

The exported function is the model's forward pass with the state made explicit:

    (ids (B, T) int64, h0 (L, B, H) float32 [, c0 for an LSTM])  ->  (logits (B, T, V), hn [, cn])

Batch and sequence length are free; feeding hn (and cn) back in as the next call's h0 (and c0)
continues the text, so one call per token samples, and one call over a whole text scores it. A zero
state starts a text. Beside the model file goes its vocabulary as JSON (``vocab_path``): id -> token,
the normalisation to apply before encoding, the <unk> id, the shapes above, and for a sentencepiece
tokenizer the model itself (base64), so a program in any language can encode and decode.

ONNX goes through torch's TorchScript-based exporter (``dynamo=False``). The torch.export-based one
(torch 2.13) writes a tanh RNN unrolled over the traced sequence length, so T is fixed, and took
15-30 s per tiny model here; the TorchScript-based one writes ONNX's own RNN/GRU/LSTM operators with
free batch and sequence axes in about a second. It needs the ``onnx`` package (not onnxscript).

minGRU and minLSTM read a chunk with a parallel scan built on ``logcumsumexp``, which ONNX has no
operator for. Their ONNX file is the one-step form instead (``MinRNN.step``: no scan, the same
numbers): ids are (batch, 1), one token per call, which is how a recurrent model samples anyway.
Their TorchScript file keeps the scan, so it takes any sequence length.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .corpus.tokenizers import UNK, CharTokenizer, Tokenizer
from .errors import CharLMError, ConfigError, MissingExtra
from .mincells import MODES as MIN_CELLS
from .model import Model
from .records import separator_id
from .transformer import CharTransformer
from .rundir import RUN_FILES, is_run_dir

FORMATS = ("onnx", "torchscript")
VOCAB_SCHEMA = "charlm.vocab/1"


class RecurrentStep(nn.Module):
    """(ids, h0) -> (logits, hn): the model with its state as plain tensors (RNN and GRU)."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, (hn,) = self.model(ids, (h0,))            # (B, T, V), (L, B, H)
        return logits, hn


class LSTMStep(nn.Module):
    """(ids, h0, c0) -> (logits, hn, cn): the model with its state as plain tensors (LSTM)."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, h0: torch.Tensor,
                c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, (hn, cn) = self.model(ids, (h0, c0))
        return logits, hn, cn


class TransformerStep(nn.Module):
    """(ids, keys, values, filled) -> (logits, keys, values, filled): the transformer's generation
    cache as plain tensors, keys and values (L, B, P, D) and filled (L, B, P) with P = window +
    memory - 1 (see CharTransformer.read: each token sees at most P tokens before it)."""

    def __init__(self, model: CharTransformer):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                filled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = [(keys[i], values[i], filled[i]) for i in range(keys.size(0))]
        logits, cache = self.model.read(ids, cache)                      # (B, T, V)
        return (logits, *(torch.stack([layer[j] for layer in cache]) for j in range(3)))


def state_names(model: Model) -> tuple[list[str], list[str]]:
    """The state's input and output names: (["h0"], ["hn"]), or with "c0"/"cn" for an LSTM, or the
    transformer's cache (keys, values, filled)."""
    if model.config.cell == "transformer":
        return ["keys", "values", "filled"], ["keys_out", "values_out", "filled_out"]
    lstm = model.config.cell == "lstm"
    return (["h0", "c0"], ["hn", "cn"]) if lstm else (["h0"], ["hn"])


def initial_state(model: Model, batch: int) -> tuple[torch.Tensor, ...]:
    """The state an exported step starts a text from, as its inputs take it (zeros; an empty cache)."""
    if model.config.cell == "transformer":
        cache = model.step_state(batch, "cpu")
        return tuple(torch.stack([layer[j] for layer in cache]) for j in range(3))
    return tuple(model.init_state(batch, "cpu"))


def step_module(model: Model) -> nn.Module:
    """A CPU float32 copy of the model in eval mode (no dropout), wrapped as a step function."""
    m = copy.deepcopy(model).cpu().float().eval()
    if model.config.cell == "transformer":
        return TransformerStep(m).eval()
    return (LSTMStep if model.config.cell == "lstm" else RecurrentStep)(m).eval()


def one_token_per_call(model: Model, format: str) -> bool:
    """Whether the export takes one token per call: an ONNX file of a minGRU/minLSTM (see above)."""
    return format == "onnx" and model.config.cell in MIN_CELLS


def vocab_path(path: str | Path) -> Path:
    """Where the vocabulary goes: model.onnx -> model.onnx.vocab.json (so an ONNX and a TorchScript
    export of the same name never share one)."""
    return Path(f"{path}.vocab.json")


def vocab_document(model: Model, tokenizer: Tokenizer, format: str, model_file: str,
                   record_sep: Optional[str] = None) -> dict:
    """The JSON written beside an exported model: enough to encode, decode and call the step."""
    c = model.config
    inputs, outputs = state_names(model)
    state_shape = f"(layers={c.layers}, batch, hidden={c.hidden_size}) float32"
    shapes = {n: state_shape for n in inputs + outputs}
    if c.cell == "transformer":
        P = model.reach - 1
        for n in inputs + outputs:
            shapes[n] = (f"(layers={c.layers}, batch, {P}) float32, 1 where a slot holds a token" if n.startswith("filled")
                         else f"(layers={c.layers}, batch, {P}, width={c.hidden_size}) float32")
    seq = "1" if one_token_per_call(model, format) else "seq"
    doc = {
        "schema": VOCAB_SCHEMA,
        "model_file": model_file,
        "format": format,
        "cell": c.cell, "layers": c.layers, "hidden_size": c.hidden_size, "vocab_size": c.vocab_size,
        "inputs": {"ids": f"(batch, {seq}) int64", **{n: shapes[n] for n in inputs}},
        "outputs": {"logits": f"(batch, {seq}, vocab={c.vocab_size}) float32, unnormalised",
                    **{n: shapes[n] for n in outputs}},
        "state_inputs": inputs,
        "state_outputs": outputs,
        "tokenizer": tokenizer.kind,
        "normalize": tokenizer.normalize,
        "records": record_sep is not None,
        "record_sep": record_sep,
    }
    if isinstance(tokenizer, CharTokenizer):
        doc.update(itos=tokenizer.itos, unk_id=0, unk=UNK, notes=[
            "One id per character: id i is itos[i]; a character not in itos is encoded as unk_id.",
            _normalize_note(tokenizer.normalize)])
    else:
        sp = tokenizer.sp
        doc.update(itos=[sp.id_to_piece(i) for i in range(sp.get_piece_size())], unk_id=sp.unk_id(),
                   unk=UNK, sentencepiece_model=base64.b64encode(tokenizer.model_proto).decode("ascii"),
                   notes=["itos holds sentencepiece pieces: U+2581 stands for a space, <0xNN> for a byte. "
                          "To encode and decode exactly, load the model: sentencepiece.SentencePieceProcessor"
                          "(model_proto=base64.b64decode(sentencepiece_model)).",
                          _normalize_note(tokenizer.normalize)])
    if record_sep is not None:
        doc["separator_id"] = separator_id(True, record_sep, tokenizer)
        doc["notes"].append(f"Trained with --records, records separated by {record_sep!r} (id "
                            f"separator_id): the state was zeroed just before each separator was read, so "
                            f"to start a record, feed the separator from a zero state; a record ends "
                            f"when the model writes the separator.")
    if seq == "1":
        doc["notes"].append("This file takes one token per call (ids of shape (batch, 1)): feed a "
                            "prime token by token, passing the state back each time.")
    return doc


def _normalize_note(form: str) -> str:
    if form == "none":
        return "No normalisation: encode the text as it is."
    note = f"Apply unicodedata.normalize('{form.upper()}', text) before encoding."
    if form == "nfd":
        note += " Decoded text is jamo: show it after unicodedata.normalize('NFC', text)."
    return note


def export_model(model: Model, tokenizer: Tokenizer, path: str | Path, format: str = "onnx",
                 force: bool = False, record_sep: Optional[str] = None) -> tuple[Path, Path]:
    """Write the step function to ``path`` and its vocabulary beside it; return both paths.

    ``record_sep`` is the record separator of a model trained with --records (None: without), which
    the vocabulary names. Refuses to replace an existing file without ``force``. Both files are
    written in full to temporary names in the same folder, and only then renamed into place, so a
    failure (a full disk) leaves neither a half-written file nor a model without its vocabulary.
    """
    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    path = Path(path).expanduser()
    vocab = vocab_path(path)
    for p in (path, vocab):
        _check_target(p, force)
    if format == "onnx" and importlib.util.find_spec("onnx") is None:
        raise MissingExtra("ONNX export needs the onnx package: pip install 'charlm[export]' (or onnx)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the folder {path.parent}: {e.strerror or e}") from None
    step = step_module(model)
    writer = _write_onnx if format == "onnx" else _write_torchscript
    doc = vocab_document(model, tokenizer, format, path.name, record_sep)
    text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    temps: list[Path] = []
    try:
        model_tmp = _written(path, lambda tmp: writer(step, model, tmp), temps)
        vocab_tmp = _written(vocab, lambda tmp: tmp.write_text(text, encoding="utf-8"), temps)
        _replace_pair(model_tmp, path, vocab_tmp, vocab, temps)
    except OSError as e:
        raise CharLMError(f"cannot write {path}: {e.strerror or e}; nothing was written") from None
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return path, vocab


def _replace_pair(model_tmp: Path, path: Path, vocab_tmp: Path, vocab: Path, temps: list[Path]) -> None:
    """Rename both written files into place. With --force the old model is first set aside (a
    rename in the same folder), so if the vocabulary's rename then fails the old pair is put back
    as it was, rather than a new model without its vocabulary or no model at all."""
    old = path.with_name(f".{path.name}.charlm-old-{os.getpid()}") if path.exists() else None
    if old is not None:
        os.replace(path, old)
        temps.append(old)   # removed at the end, once the new pair is in place
    try:
        os.replace(model_tmp, path)
        temps.remove(model_tmp)
        os.replace(vocab_tmp, vocab)
        temps.remove(vocab_tmp)
    except OSError:
        if model_tmp not in temps:
            path.unlink(missing_ok=True)   # the new model: never one without its vocabulary
        if old is not None:
            os.replace(old, path)          # the old model, beside its old vocabulary, untouched
            temps.remove(old)
        raise


def _check_target(p: Path, force: bool) -> None:
    """Refuse, before anything is written, a target that --force must not replace: anything but a
    regular file (a device such as /dev/null, a FIFO, a folder, a link), or a file charlm owns in a
    run folder (its checkpoints, marker, lock, logs, encoded data)."""
    in_run = (p.name in RUN_FILES and is_run_dir(p.parent)) or (p.parent.name == "data" and is_run_dir(p.parent.parent))
    if in_run:
        raise ConfigError(f"{p} belongs to the charlm run {p.parent}; export to a file outside it, "
                          f"or under another name")
    try:
        mode = os.lstat(p).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(f"cannot use {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{p} is a folder; -o names the file to write")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{p} is not a regular file (a device, a FIFO or a link); --force replaces "
                          f"only regular files: choose another -o")
    if not force:
        raise ConfigError(f"{p} already exists; pass --force to replace it")


def example_inputs(model: Model, batch: int = 1, seq: int = 2) -> tuple[torch.Tensor, ...]:
    """Zero ids and a zero state: what the exporters trace with."""
    return (torch.zeros(batch, seq, dtype=torch.long), *initial_state(model, batch))


def _write_onnx(step: nn.Module, model: Model, path: Path) -> None:
    inputs, outputs = state_names(model)
    # A min cell is traced with one token, which takes MinRNN's one-step path (no logcumsumexp);
    # its sequence axis stays fixed at 1, so a runtime refuses a longer input rather than read
    # only its first token.
    seq = 1 if one_token_per_call(model, "onnx") else 2
    free = {0: "batch"} if seq == 1 else {0: "batch", 1: "seq"}
    axes = {"ids": free, "logits": free, **{n: {1: "batch"} for n in inputs + outputs}}
    # Traced with a batch of one: the exporter warns that an RNN traced with a larger batch may
    # fail at other batch sizes. Its deprecation and tracer warnings are about torch, not the user.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(step, example_inputs(model, seq=seq), str(path), input_names=["ids", *inputs],
                          output_names=["logits", *outputs], dynamic_axes=axes, dynamo=False)


def _write_torchscript(step: nn.Module, model: Model, path: Path) -> None:
    # Tracing records the aten rnn/gru/lstm call, which takes any batch and sequence length.
    # torch 2.13 marks TorchScript deprecated (in favour of torch.export, which has no file a
    # C++ or Java program loads yet): that warning is torch's business, not the user's.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(step, example_inputs(model))
        torch.jit.save(traced, str(path))


def _written(path: Path, write: Callable[[Path], None], temps: list[Path]) -> Path:
    """Write a file under a temporary name beside ``path`` (listed in ``temps`` at once, for the
    caller to remove on failure) with an ordinary file's mode; return that name. Raises OSError."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    temps.append(tmp)
    write(tmp)
    mask = os.umask(0o022)
    os.umask(mask)
    tmp.chmod(0o666 & ~mask)  # mkstemp makes 0600; an exported model is an ordinary file
    return tmp
