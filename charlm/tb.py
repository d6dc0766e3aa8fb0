"""TensorBoard event files for `charlm train --tensorboard` (the optional `tensorboard` extra).

A sink next to MetricsLog: it receives the same events on rank 0 and writes them as scalars with
torch.utils.tensorboard's SummaryWriter into RUN_DIR/tensorboard. View with
`tensorboard --logdir runs`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import MissingExtra
from .events import ChunkTrained, Evaluated, Event, GradientReport


def require() -> None:
    """Fail early, before a run directory is made, when TensorBoard cannot be written."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise MissingExtra("--tensorboard needs the tensorboard package: pip install "
                                 "'charlm[tensorboard]' (or pip install tensorboard)") from None


def _scalars(prefix: str, value: Any):
    """Flatten a gradient report's horizons into (tag, number) pairs.

    A horizon of None ("beyond k-1": the gradient had not yet vanished at the chunk start) has no
    number to plot, so it is left out rather than drawn as a made-up value; metrics.jsonl keeps it.
    """
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _scalars(f"{prefix}/{k}", v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        yield prefix, float(value)


class TensorBoardSink:
    def __init__(self, run_dir: str | Path):
        require()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def __call__(self, event: Event) -> None:
        w = self.writer
        if isinstance(event, ChunkTrained):
            if not event.skipped:
                w.add_scalar("train/chunk_loss", event.loss, event.step)
            w.add_scalar("train/grad_norm", event.grad_norm, event.step)
            w.add_scalar("train/lr", event.lr, event.step)
            w.add_scalar("train/tokens_per_s", event.tokens_per_s, event.step)
        elif isinstance(event, Evaluated):
            w.add_scalar("val/loss", event.val_loss, event.step)
            w.add_scalar("val/bits_per_char", event.val_bpc, event.step)
            if math.isfinite(event.train_loss):
                w.add_scalar("train/loss", event.train_loss, event.step)
        elif isinstance(event, GradientReport):
            for tag, value in _scalars("grad_horizon", event.horizons):
                w.add_scalar(tag, value, event.step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
