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
import warnings
import zipfile
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch

from .config import NORMALIZATIONS, ModelConfig
from .corpus.tokenizers import UNK, Tokenizer, tokenizer_from_dict
from .errors import CheckpointError, ConfigError
from .limits import check_model_fits
from .model import Model, build_model

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


def save_checkpoint(record: "Checkpoint | dict[str, Any]", path: Path) -> None:
    """Atomically write a checkpoint record (or its dict) to path; on any failure the old file is
    left untouched."""
    path = Path(path)
    entries = record.to_dict() if isinstance(record, Checkpoint) else record
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **entries}
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
            if _is_torchscript(f):
                raise CheckpointError(f"{p} is a TorchScript file (an exported model?), not a charlm "
                                      f"checkpoint: give a run directory or a checkpoint charlm train wrote")
            # torch warns about what it meets in a foreign file (a newer pickle protocol, a
            # TorchScript archive): the error below says what is wrong, in one line of charlm's.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
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


def _is_torchscript(f) -> bool:
    """Whether an open file is a TorchScript archive (torch.jit.save): a zip holding code/ or
    constants.pkl, which torch.load would hand to torch.jit.load. Leaves f at its start."""
    try:
        if not zipfile.is_zipfile(f):
            return False
        with zipfile.ZipFile(f) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    finally:
        f.seek(0)


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


# ----------------------------------------------------------------------------------------------
# The record: a checkpoint's entries by name


def _entry(kind: type | tuple, resume: bool = False, default: Any = None):
    """A checkpoint entry of type ``kind``; ``resume``: what a resume needs beyond sampling."""
    return field(default=default, metadata={"kind": kind, "resume": resume})


@dataclass
class Checkpoint:
    """Everything a checkpoint file holds, by name: the training loop builds one and saves
    ``to_dict()``; every reader (resume, fine-tuning, ``info``, ``runs``, the Python API, the lab)
    takes one from ``read_checkpoint`` and reads attributes.

    The first three entries are what sampling and evaluating need, and are required. The rest
    may be missing from a checkpoint written by hand or by an older charlm: they are then None
    (an entry of the wrong type counts as missing), ``info`` shows what there is, and a resume
    refuses with one line naming what it lacks (``check_resumable``)."""

    model_config: dict = _entry(dict)
    model: dict = _entry(dict)                 # weight name -> tensor
    tokenizer: dict = _entry(dict)             # Tokenizer.to_dict()
    run_id: Optional[str] = _entry(str)        # the run's identity (its marker holds the same)
    train_config: Optional[dict] = _entry(dict, resume=True)
    optimizer: Optional[dict] = _entry(dict, resume=True)
    progress: Optional[dict] = _entry(dict, resume=True)        # training.state.Progress.to_dict()
    hidden_state: Optional[list] = _entry(list, resume=True)    # per rank: the carried state tensors
    rng: Optional[list] = _entry(list, resume=True)             # per rank: the generators' states
    corpus: Optional[dict] = _entry(dict, resume=True)          # name, path, sha256, sizes
    grad_scaler: Optional[dict] = _entry(dict)                  # fp16 runs: the loss scale
    world_size: Optional[int] = _entry(int)
    init_from: Optional[dict] = _entry(dict)   # fine-tuning: where the weights came from
    replica_digests: Optional[list] = _entry(list)
    device: Optional[str] = _entry(str)
    precision: Optional[str] = _entry(str)
    versions: Optional[dict] = _entry(dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str | Path = "the checkpoint") -> "Checkpoint":
        """The record of a loaded checkpoint dict: a required entry that is missing or of the
        wrong type is a CheckpointError naming every such entry; an optional one becomes None."""
        values: dict[str, Any] = {}
        missing = []
        for f in fields(cls):
            value = raw.get(f.name)
            ok = isinstance(value, f.metadata["kind"]) and not isinstance(value, bool)
            if f.name not in MODEL_KEYS:
                values[f.name] = value if ok else None
            elif ok:
                values[f.name] = value
            else:
                missing.append(f.name)
        if missing:
            raise CheckpointError(f"{where} is an incomplete charlm checkpoint (missing or malformed: "
                                  f"{', '.join(missing)})")
        return cls(**values)

    @classmethod
    def of_model(cls, model: Model, tokenizer: Tokenizer) -> "Checkpoint":
        """The record of a model that lives in memory only (no training entries)."""
        return cls(model_config=dataclasses.asdict(model.config), tokenizer=tokenizer.to_dict(),
                   model={k: v.detach().cpu() for k, v in model.state_dict().items()})

    def to_dict(self) -> dict[str, Any]:
        """The entries as the file stores them (an entry that does not apply is stored as None)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def lacks_for_resume(self) -> list[str]:
        return [f.name for f in fields(self) if f.metadata["resume"] and getattr(self, f.name) is None]

    # What readers ask of it, answered once.
    def trained(self, key: str, default: Any = None) -> Any:
        """An option the run was trained with (train_config[key]), or default."""
        return (self.train_config or {}).get(key, default)

    @property
    def corpus_path(self) -> Optional[str]:
        """The corpus file the run trained on, when it was one file (not the built-in corpus)."""
        path = (self.corpus or {}).get("path")
        return path if isinstance(path, str) else None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint safely and return its record (``load_checkpoint`` returns the raw dict)."""
    return Checkpoint.from_dict(load_checkpoint(path, map_location), resolve_checkpoint(path))


# What sampling/evaluating needs (checked on every load; Checkpoint marks what a resume needs on
# top). The progress record's own keys are training.state.Progress's business (its from_dict
# checks them).
MODEL_KEYS = {"model_config": dict, "model": dict, "tokenizer": dict}


def check_resumable(ckpt: Checkpoint, path: str | Path) -> None:
    """A checkpoint that samples may still lack what a resume needs (e.g. one written by hand)."""
    missing = ckpt.lacks_for_resume()
    if missing:
        raise CheckpointError(f"cannot resume from {path}: the checkpoint lacks {', '.join(missing)} "
                              f"(it can still be sampled; start a new run to train further)")


def model_from_checkpoint(ckpt: Checkpoint, device: str | torch.device = "cpu") -> tuple[Model, Tokenizer]:
    """Rebuild the model (in eval mode, on device) and its tokenizer from a loaded checkpoint.

    Every size in the checkpoint's metadata is untrusted: it is checked against the weights the file
    really holds (shape by shape, built on the meta device, which allocates nothing) and against
    the machine's memory before a single parameter is allocated, and the weights must be finite.
    """
    config, tokenizer = check_model_record(ckpt, device)
    model = build_model(config)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as e:  # dtypes that do not convert, say; the shapes were checked above
        detail = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        raise CheckpointError(f"checkpoint weights do not match its model config: {detail[0][:200]}") from None
    model.to(device).eval()
    model.flatten_parameters()
    return model, tokenizer


def check_model_record(ckpt: Checkpoint, device: str | torch.device = "cpu") -> tuple[ModelConfig, Tokenizer]:
    """The checkpoint's model config and tokenizer, once its sizes agree with the stored weights,
    the weights are finite and the model fits the device; CheckpointError (one line) otherwise.
    Allocates nothing of the model's size: call it before building a model from a checkpoint
    (sampling and evaluating do, through model_from_checkpoint; a resume should too)."""
    config = _model_config(ckpt.model_config)
    weights = ckpt.model
    _check_shapes(config, weights)
    bad = next((k for k, v in weights.items() if not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"the checkpoint's weights are not finite (NaN or infinity in {bad}): it "
                              f"cannot sample or evaluate; use an earlier checkpoint of the run")
    check_model_fits(config, config.vocab_size, device, training=False)
    tokenizer = _tokenizer(ckpt.tokenizer)
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
    E = c.hidden_size if c.cell == "transformer" else c.embedding_size   # a transformer embeds at its width
    for name, claim, bound in (("layers", c.layers, len(weights)),
                               ("vocab_size", c.vocab_size * E, stored),
                               ("hidden_size", c.hidden_size * max(E, c.vocab_size), stored)):
        if claim > bound:
            raise CheckpointError(f"{mismatch}: model_config.{name} is {getattr(c, name):,}, but the file "
                                  f"stores only {len(weights)} tensors of {stored:,} values in all")
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
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


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Model, Tokenizer, Checkpoint]:
    """The model (eval mode, on device), its tokenizer and the checkpoint's record."""
    ckpt = read_checkpoint(path, map_location="cpu")
    model, tok = model_from_checkpoint(ckpt, device)
    return model, tok, ckpt
