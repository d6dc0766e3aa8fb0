"""Checkpoints and run directories.

A checkpoint is one file that ``torch.load(path, weights_only=True)`` reads: only tensors and
plain containers/str/int/float/bytes, never arbitrary pickled objects. It holds everything needed
to sample, evaluate, inspect and resume on any device. Files are written atomically: a temporary
file in the same folder, flushed and fsynced, then ``os.replace``d over the old one, so a crash at
any instant leaves either the old or the new checkpoint, both complete.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import NORMALIZATIONS, ModelConfig
from .errors import CheckpointError, ConfigError
from .limits import check_model_fits
from .model import CharRNN
from .corpus.tokenizers import UNK, Tokenizer, tokenizer_from_dict

FORMAT = "charlm-checkpoint"
FORMAT_VERSION = 1


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its best.pt (or last.pt when no eval has run); a file means itself."""
    try:
        return _resolve(Path(path))
    except OSError as e:  # a folder on the way that may not be searched (EACCES), a name too long
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None


def _resolve(p: Path) -> Path:
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"run directory {p} has no best.pt or last.pt checkpoint yet")
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} is not a regular file")
    return p


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Atomically write payload to path; on any failure the old file is left untouched."""
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    # Serialise in memory first: torch.save streaming into a full disk fails with an opaque
    # RuntimeError, a plain write fails with the OSError that names the cause (ENOSPC, EIO...).
    buf = io.BytesIO()
    torch.save(payload, buf)
    fd, tmp_name = -1, None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(path.parent)
    except OSError as e:
        reason = e.strerror or str(e)
        raise CheckpointError(f"could not save checkpoint {path}: {reason}; the previous checkpoint "
                              f"is unchanged") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform (Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Safely read a checkpoint (weights_only=True: a malicious pickle cannot run code)."""
    p = resolve_checkpoint(path)
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty: not a charlm checkpoint")
    try:
        f = open(p, "rb")
    except OSError as e:  # permission denied, or gone since it was listed
        raise CheckpointError(f"cannot read checkpoint {p}: {e.strerror or e}") from None
    try:
        with f:
            ckpt = torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch wraps the reason in boilerplate; keep the one line that names it.
        reason = next((ln.strip() for ln in str(e).splitlines()
                       if "GLOBAL" in ln or ln.strip().startswith("Unsupported")), "")
        if "GLOBAL" in reason:
            name = reason.split("GLOBAL", 1)[1].split()[0]
            raise CheckpointError(f"{p} was refused by the safe loader: it asks to import {name}, "
                                  f"which no charlm checkpoint does (it may be malicious; nothing in it "
                                  f"was run)") from None
        raise CheckpointError(f"{p} is not a charlm checkpoint (not a PyTorch checkpoint file, or "
                              f"corrupt: the safe loader stopped at {reason or 'an unknown record'})") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, UnicodeDecodeError, KeyError,
            AttributeError, TypeError, IndexError, OSError) as e:
        raise CheckpointError(f"{p} is not a readable charlm checkpoint (truncated or corrupt: "
                              f"{type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a charlm checkpoint (it was written by another program)")
    if not isinstance(ckpt.get("format_version"), int):
        raise CheckpointError(f"{p} is not a valid charlm checkpoint (no format version)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{p} was written by a newer charlm (format {ckpt['format_version']}); upgrade charlm")
    missing = [k for k, t in MODEL_KEYS.items() if not isinstance(ckpt.get(k), t)]
    if missing:
        raise CheckpointError(f"{p} is an incomplete charlm checkpoint (missing or malformed: "
                              f"{', '.join(missing)})")
    _check_weight_sizes(ckpt["model"], p)
    return ckpt


def _check_weight_sizes(weights: dict[str, Any], p: Path) -> None:
    """Every weight is a named tensor that really holds its values: torch.save keeps a view's
    shape and strides, so an edited file can declare a (10**8, 64) tensor over one stored number
    (stride 0), which costs nothing here and gigabytes once copied into a model. The weights'
    total size cannot exceed the file's either."""
    bad = next((k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{p} is a damaged charlm checkpoint: model weight {str(bad)[:60]!r} is not a tensor")
    total = 0
    for key, v in weights.items():
        nbytes = v.numel() * v.element_size()
        if v.layout != torch.strided or nbytes > v.untyped_storage().nbytes():
            raise CheckpointError(f"{p} is a damaged charlm checkpoint: weight {key[:60]} declares "
                                  f"{v.numel():,} values but stores fewer")
        total += nbytes
    size = p.stat().st_size
    if total > size:
        raise CheckpointError(f"{p} is a damaged charlm checkpoint: its weights claim {total:,} bytes, "
                              f"more than the file's {size:,}")


# What sampling/evaluating needs (checked on every load), and what resuming needs on top.
MODEL_KEYS = {"model_config": dict, "model": dict, "tokenizer": dict}
RESUME_KEYS = {"train_config": dict, "optimizer": dict, "progress": dict, "hidden_state": list,
               "rng": list, "corpus": dict}


def check_resumable(ckpt: dict[str, Any], path: str | Path) -> None:
    """A checkpoint that samples may still lack what a resume needs (e.g. one written by hand)."""
    missing = [k for k, t in RESUME_KEYS.items() if not isinstance(ckpt.get(k), t)]
    progress = ckpt.get("progress") if isinstance(ckpt.get("progress"), dict) else {}
    missing += [f"progress.{k}" for k in ("step", "epoch", "step_in_epoch", "tokens_seen", "elapsed",
                                          "best_val_loss", "best_val_bpc", "metrics_offset")
                if k not in progress]
    if missing:
        raise CheckpointError(f"cannot resume from {path}: the checkpoint lacks {', '.join(missing)} "
                              f"(it can still be sampled; start a new run to train further)")


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> tuple[CharRNN, Tokenizer]:
    """Rebuild the model (in eval mode, on device) and its tokenizer from a loaded checkpoint.

    Every size in the checkpoint's metadata is untrusted: it is checked against the weights the file
    really holds (shape by shape, built on the meta device, which allocates nothing) and against
    the machine's memory before a single parameter is allocated, and the weights must be finite.
    """
    config, tokenizer = check_model_record(ckpt, device)
    model = CharRNN(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # dtypes that do not convert, say; the shapes were checked above
        detail = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        raise CheckpointError(f"checkpoint weights do not match its model config: {detail[0][:200]}") from None
    model.to(device).eval()
    model.rnn.flatten_parameters()
    return model, tokenizer


def check_model_record(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> tuple[ModelConfig, Tokenizer]:
    """The checkpoint's model config and tokenizer, once its sizes agree with the stored weights,
    the weights are finite and the model fits the device; CheckpointError (one line) otherwise.
    Allocates nothing of the model's size: call it before building a model from a checkpoint
    (sampling and evaluating do, through model_from_checkpoint; a resume should too)."""
    config = _model_config(ckpt["model_config"])
    weights = ckpt["model"]
    _check_shapes(config, weights)
    bad = next((k for k, v in weights.items() if not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"the checkpoint's weights are not finite (NaN or infinity in {bad}): it "
                              f"cannot sample or evaluate; use an earlier checkpoint of the run")
    check_model_fits(config, config.vocab_size, device, training=False)
    tokenizer = _tokenizer(ckpt["tokenizer"])
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"checkpoint's tokenizer has {tokenizer.vocab_size:,} tokens but its model "
                              f"has {config.vocab_size:,}: the file is damaged or was edited")
    return config, tokenizer


def _model_config(raw: dict[str, Any]) -> ModelConfig:
    try:
        config = ModelConfig(**raw).validate()
    except (TypeError, ConfigError) as e:  # unknown or invalid fields: damaged, or not ours
        raise CheckpointError(f"checkpoint has an invalid model config: {e}") from None
    if config.vocab_size < 1:
        raise CheckpointError("checkpoint has an invalid model config: vocab_size must be at least 1")
    return config


def _check_shapes(config: ModelConfig, weights: dict[str, Any]) -> None:
    """Refuse metadata that disagrees with the stored weights, without allocating the model.

    Cheap bounds first (every layer stores at least one tensor, the embedding alone holds
    vocab x embedding values), so an edited ``layers=10**6`` or ``vocab_size=10**8`` is refused at
    once; then the exact shapes of a model built on the meta device (no memory) are compared."""
    mismatch = "checkpoint weights do not match its model config"
    odd = next((k for k, v in weights.items() if not v.is_floating_point()), None)
    if odd is not None:  # integer, bool or complex weights: not ours, and a copy would cast silently
        raise CheckpointError(f"{mismatch}: {odd[:60]} holds {str(weights[odd].dtype).replace('torch.', '')} "
                              f"values, not floating point")
    stored = sum(v.numel() for v in weights.values())
    c = config
    for name, claim, bound in (("layers", c.layers, len(weights)),
                               ("vocab_size", c.vocab_size * c.embedding_size, stored),
                               ("hidden_size", c.hidden_size * max(c.embedding_size, c.vocab_size), stored)):
        if claim > bound:
            raise CheckpointError(f"{mismatch}: model_config.{name} is {getattr(c, name):,}, but the file "
                                  f"stores only {len(weights)} tensors of {stored:,} values in all")
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in CharRNN(config).state_dict().items()}
    except Exception:  # pragma: no cover - a cell the meta device cannot build: the bounds above,
        return          # the memory check and load_state_dict's own shape check still stand
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
        raise CheckpointError(f"{mismatch}: {what}")
    for key, shape in expected.items():
        if tuple(weights[key].shape) != shape:
            raise CheckpointError(f"{mismatch}: {key} is stored as {tuple(weights[key].shape)} but "
                                  f"model_config says {shape} (cell {c.cell}, hidden_size {c.hidden_size}, "
                                  f"embedding_size {c.embedding_size}, vocab_size {c.vocab_size})")


def _tokenizer(raw: dict[str, Any]) -> Tokenizer:
    """The tokenizer, its record checked first (a damaged one would fail deep inside numpy or
    sentencepiece, or decode to the wrong characters)."""
    bad = "checkpoint has an unreadable tokenizer"
    kind = raw.get("kind")
    normalize = raw.get("normalize", "none")
    if normalize not in NORMALIZATIONS:
        raise CheckpointError(f"{bad}: normalize is {normalize!r}, not one of {', '.join(NORMALIZATIONS)}")
    if kind == "char":
        chars = raw.get("chars")
        body = chars[1:] if isinstance(chars, list) and chars[:1] == [UNK] else chars
        if (not isinstance(chars, list) or not chars
                or not all(isinstance(ch, str) and len(ch) == 1 and not 0xD800 <= ord(ch) <= 0xDFFF for ch in body)
                or len(set(chars)) != len(chars)):
            raise CheckpointError(f"{bad}: its character list is not a list of distinct characters")
    elif kind in ("spm-char", "bpe", "unigram") and not isinstance(raw.get("model_proto"), bytes):
        raise CheckpointError(f"{bad}: its sentencepiece model is missing")
    try:
        return tokenizer_from_dict(raw)
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, IndexError) as e:
        raise CheckpointError(f"{bad} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[CharRNN, Tokenizer, dict[str, Any]]:
    ckpt = load_checkpoint(path, map_location="cpu")
    model, tok = model_from_checkpoint(ckpt, device)
    return model, tok, ckpt
