"""The run's state as a value: ``Progress`` (the checkpoint's "progress" record) and ``TrainState``.

``Progress`` is the only list of the progress keys: the checkpoint writes ``to_dict()``, a resume
reads ``from_dict()``, and ``charlm info`` reads the same. A key added here is written, read and
checked everywhere at once; one marked ``optional`` may be absent from older checkpoints.

``TrainState`` bundles what a step changes (model, optimizer, loss scaler, the carried hidden
state, the progress counters) with ``state_dict()`` / ``load_state_dict()``. Every entry a resume
reads is checked first, so a hand-edited or damaged last.pt gives one CheckpointError naming the
entry, never a KeyError or TypeError traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

import torch

from ..checkpoint import Checkpoint
from ..devices import rng_state, set_rng_state
from ..errors import CheckpointError


def _optional(default: Any = None, factory: Optional[Callable[[], Any]] = None):
    """A field that older checkpoints may lack (it then takes its default)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"optional": True})
    return field(default=default, metadata={"optional": True})


@dataclass
class Progress:
    """Where the run stands. All of it goes into the checkpoint, all of it comes back on resume."""

    step: int = 0                   # optimizer steps in the whole run
    epoch: int = 0
    step_in_epoch: int = 0          # chunk index within the current epoch
    tokens_seen: int = 0
    elapsed: float = 0.0            # seconds trained, all launches together
    best_val_loss: float = math.inf
    best_val_bpc: float = math.inf
    metrics_offset: int = 0         # bytes of metrics.jsonl that belong to this checkpoint
    lr_scale: float = _optional(1.0)        # lowered after a numeric rollback
    rollbacks: int = _optional(0)
    since_eval: list = _optional(factory=list)   # chunk losses since the last evaluation

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), list) else v)
                for f in fields(self)}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "the checkpoint") -> "Progress":
        """Read a checkpoint's progress record, checking every key's presence and type."""
        if not isinstance(raw, dict):
            raise CheckpointError(f"cannot resume from {where}: its progress record is missing or not a "
                                  f"dictionary (it can still be sampled; start a new run to train further)")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                if f.metadata.get("optional"):
                    continue
                raise CheckpointError(f"cannot resume from {where}: the checkpoint lacks progress.{f.name} "
                                      f"(it can still be sampled; start a new run to train further)")
            values[f.name] = _checked(f.name, f.type, raw[f.name], where)
        return cls(**values)

    @classmethod
    def lenient(cls, raw: Any) -> dict[str, Any]:
        """Every progress key -> its value when present and well typed, else None (for `charlm
        info`, which shows what an incomplete checkpoint has rather than refusing it)."""
        raw = raw if isinstance(raw, dict) else {}
        out: dict[str, Any] = {}
        for f in fields(cls):
            try:
                out[f.name] = _checked(f.name, f.type, raw[f.name], "")
            except (KeyError, CheckpointError):
                out[f.name] = None
        return out


def _checked(name: str, kind: str, value: Any, where: str) -> Any:
    """value if it has the field's type (a float field takes an int too), else a CheckpointError."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"cannot resume from {where}: progress.{name} is {type(value).__name__} "
                               f"{value!r:.40}, not {what} (the checkpoint was edited or damaged)")

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        if not (isinstance(value, int) and not isinstance(value, bool)) or value < 0:
            raise bad("a non-negative integer")
        return value
    if kind == "float":
        if not number or math.isnan(value):
            raise bad("a number")
        return float(value)
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in value):
        raise bad("a list of numbers")
    return [float(v) for v in value]


@dataclass
class TrainState:
    """Everything one training step reads and changes.

    ``hidden`` is the state carried from chunk to chunk, each tensor (layers, B, H) in float32 on
    the device; it is reset to zeros at an epoch start.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Optional["torch.amp.GradScaler"]
    hidden: tuple
    progress: Progress
    device: torch.device
    rank: int = 0

    def reset_hidden(self, batch_size: int) -> None:
        self.hidden = self.model.init_state(batch_size, self.device)

    def state_dict(self, gather: Callable[[Any], list]) -> dict[str, Any]:
        """The checkpoint entries this state owns. ``gather`` collects a value from every rank
        in rank order (a one-element list without DDP): each rank has its own streams' hidden
        state and its own random generators."""
        hidden = gather(tuple(s.detach().float().cpu() for s in self.hidden))
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "progress": self.progress.to_dict(),
            "hidden_state": [list(h) for h in hidden],
            "rng": gather(rng_state(self.device)),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, ckpt: Checkpoint, where: str = "the checkpoint") -> None:
        """Restore from a checkpoint's record, every entry checked before anything is changed."""
        progress = Progress.from_dict(ckpt.progress, where)
        hidden = _hidden_of(ckpt, self.rank, tuple(self.hidden), where)
        rng = _rng_of(ckpt, self.rank, where)
        try:
            self.model.load_state_dict(ckpt.model)
        except (RuntimeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"cannot resume from {where}: its weights do not fit its model "
                                  f"({type(e).__name__})") from None
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"cannot resume from {where}: its optimizer state is damaged "
                                  f"({type(e).__name__}); start a new run") from None
        scaler_state = ckpt.grad_scaler
        if self.scaler is not None and scaler_state:
            try:
                self.scaler.load_state_dict(scaler_state)   # an fp16 run resumes with its loss scale
            except (KeyError, TypeError, AttributeError, RuntimeError) as e:
                raise CheckpointError(f"cannot resume from {where}: its grad_scaler entry is damaged "
                                      f"({type(e).__name__})") from None
        try:
            set_rng_state(rng, self.device)
        except (KeyError, TypeError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"cannot resume from {where}: its rng entry is damaged "
                                  f"({type(e).__name__})") from None
        self.hidden = tuple(h.to(self.device, torch.float32) for h in hidden)
        # In place: the loop holds this very Progress (a rollback restores it mid-loop).
        for f in fields(Progress):
            setattr(self.progress, f.name, getattr(progress, f.name))
        self.model.flatten_parameters()


def _hidden_of(ckpt: Checkpoint, rank: int, like: tuple, where: str) -> tuple:
    """This rank's carried state from the checkpoint, shaped like ``like``."""
    entry = ckpt.hidden_state
    bad = CheckpointError(f"cannot resume from {where}: its hidden_state entry is missing or damaged "
                          f"(the checkpoint was edited); start a new run")
    if not isinstance(entry, list) or rank >= len(entry) or not isinstance(entry[rank], (list, tuple)):
        raise bad
    mine = tuple(entry[rank])
    if len(mine) != len(like) or not all(isinstance(t, torch.Tensor) and t.shape == s.shape
                                         and t.is_floating_point() for t, s in zip(mine, like)):
        raise bad
    return mine


def _rng_of(ckpt: Checkpoint, rank: int, where: str) -> dict:
    entry = ckpt.rng
    if (not isinstance(entry, list) or rank >= len(entry) or not isinstance(entry[rank], dict)
            or not isinstance(entry[rank].get("torch"), torch.Tensor)
            or entry[rank]["torch"].dtype != torch.uint8):
        raise CheckpointError(f"cannot resume from {where}: its rng entry is missing or damaged "
                              f"(the checkpoint was edited); start a new run")
    return entry[rank]
