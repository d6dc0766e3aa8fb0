"""Checkpoints: the file format.

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

from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .model import CharRNN
from .corpus.tokenizers import Tokenizer, tokenizer_from_dict

FORMAT = "charlm-checkpoint"
FORMAT_VERSION = 1


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its best.pt (or last.pt when no eval has run); a file means itself."""
    p = Path(path)
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
    return ckpt


# What sampling/evaluating needs (checked on every load), and what resuming needs on top. The
# progress record's own keys are training.state.Progress's business (its from_dict checks them).
MODEL_KEYS = {"model_config": dict, "model": dict, "tokenizer": dict}
RESUME_KEYS = {"train_config": dict, "optimizer": dict, "progress": dict, "hidden_state": list,
               "rng": list, "corpus": dict}


def check_resumable(ckpt: dict[str, Any], path: str | Path) -> None:
    """A checkpoint that samples may still lack what a resume needs (e.g. one written by hand)."""
    missing = [k for k, t in RESUME_KEYS.items() if not isinstance(ckpt.get(k), t)]
    if missing:
        raise CheckpointError(f"cannot resume from {path}: the checkpoint lacks {', '.join(missing)} "
                              f"(it can still be sampled; start a new run to train further)")


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> tuple[CharRNN, Tokenizer]:
    """Rebuild the model (in eval mode, on device) and its tokenizer from a loaded checkpoint."""
    try:
        config = ModelConfig(**ckpt["model_config"]).validate()
    except (TypeError, ConfigError) as e:  # unknown or invalid fields: damaged, or not ours
        raise CheckpointError(f"checkpoint has an invalid model config: {e}") from None
    model = CharRNN(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        detail = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        raise CheckpointError(f"checkpoint weights do not match its model config: {detail[0][:200]}") from None
    model.to(device).eval()
    model.rnn.flatten_parameters()
    try:
        tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as e:
        raise CheckpointError(f"checkpoint has an unreadable tokenizer ({type(e).__name__}: {e})") from None
    return model, tokenizer


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[CharRNN, Tokenizer, dict[str, Any]]:
    ckpt = load_checkpoint(path, map_location="cpu")
    model, tok = model_from_checkpoint(ckpt, device)
    return model, tok, ckpt
