"""Events the core emits while it works. The CLI renders them; metrics.jsonl records them.

Plain dataclasses with no torch or rich, so a display can import them cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# A long computation's progress: called with (work done, total work), in units of its own. The
# core calls it between pieces of work; the CLI draws a bar from it on a terminal.
ProgressCallback = Callable[[int, int], None]


@dataclass
class Event:
    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["type"] = self.kind
        return d

    kind = "event"


@dataclass
class RunStarted(Event):
    kind = "start"
    run_dir: str
    device: str
    model: str            # e.g. "lstm 1x384"
    parameters: int
    tokenizer: str
    vocab_size: int
    corpus: str
    train_tokens: int
    val_tokens: int
    batch_size: int
    seq_len: int
    steps_per_epoch: int
    max_steps: Optional[int]
    max_time: Optional[float]
    start_step: int
    resumed: bool
    world_size: int = 1


@dataclass
class ChunkTrained(Event):
    """One optimizer step on one BPTT chunk."""

    kind = "chunk"
    step: int
    epoch: int
    loss: float           # mean nats per token of this chunk
    grad_norm: float      # global norm before clipping
    clipped: bool
    lr: float
    tokens: int           # tokens seen so far in the run (all ranks)
    elapsed: float        # seconds of training in the whole run
    tokens_per_s: float
    skipped: bool = False  # non-finite loss or gradient: the update was not applied


@dataclass
class Evaluated(Event):
    kind = "eval"
    step: int
    train_loss: float     # mean chunk loss since the previous evaluation
    val_loss: float       # nats per token
    val_bpc: float        # bits per original character
    elapsed: float
    best: bool


@dataclass
class CheckpointSaved(Event):
    kind = "checkpoint"
    path: str
    step: int


@dataclass
class Notice(Event):
    """Something the user should know: a rollback, an epoch boundary, an interrupt."""

    kind = "notice"
    message: str
    step: int = 0
    level: str = "info"   # info | warning


@dataclass
class GradientReport(Event):
    kind = "grad_report"
    step: int
    horizons: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sampled(Event):
    """A short sample from the model at an evaluation (same seed every time: comparable)."""

    kind = "sample"
    step: int
    text: str


@dataclass
class Finished(Event):
    kind = "finish"
    run_dir: str
    step: int
    reason: str
    best_val_loss: Optional[float]
    best_val_bpc: Optional[float]
    elapsed: float
