"""The live training view: the core's events as a Rich live display on a terminal, or plain
periodic lines when the output is not a terminal. `train` and `sweep` use it."""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from typing import Any, Optional, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from .app import silence_stdout
from ..events import (ChunkTrained, Evaluated, Event, Finished, GradientReport,
                     Notice, RunStarted, Sampled)


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))] if math.isfinite(v) else "!"
                   for v in values)


def human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


class TrainingView:
    """Callable event sink for `charlm train`."""

    def __init__(self, console: Console, plain: Optional[bool] = None, quiet: bool = False,
                 plain_every: float = 10.0):
        self.console = console
        self.plain = (not console.is_terminal) if plain is None else plain
        self.quiet = quiet
        self.plain_every = plain_every
        self.recent: deque[float] = deque(maxlen=48)
        self.clips = 0
        self.skipped = 0
        self.last_chunk: Optional[ChunkTrained] = None
        self.last_sample: Optional[Sampled] = None
        self.start: Optional[RunStarted] = None
        self.evals = Table(title="evaluations", expand=False, header_style="bold")
        for col in ("step", "train loss", "val loss", "val bits/char", "elapsed"):
            self.evals.add_column(col, justify="right")
        self.live: Optional[Live] = None
        self.progress: Optional[Progress] = None
        self.task = None
        self._last_plain = 0.0
        self.stdout_closed = False
        if self.plain:
            self.console.soft_wrap = True  # a log line stays one line, whatever the width

    # -- event dispatch -------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        if self.stdout_closed or (self.quiet and not isinstance(event, (Notice, Finished))):
            return
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            try:
                handler(event)
            except OSError as e:   # `charlm train | head -3`, a closed terminal: train on
                self._display_off(e)

    def _display_off(self, error: OSError) -> None:
        """The display cannot write: say so once on stderr and stay silent; the run goes on
        (metrics.jsonl records everything the display would have shown)."""
        self.stdout_closed = True
        self.live = None
        silence_stdout()
        try:
            print(f"warning: cannot write to standard output ({error.strerror or error}): display off, "
                  f"training goes on; metrics.jsonl records the run", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        if self.live is not None:
            try:
                self._refresh()
                self.live.stop()
            except OSError as e:
                self._display_off(e)
            self.live = None

    # -- handlers ---------------------------------------------------------------------------------
    def _on_start(self, e: RunStarted) -> None:
        self.start = e
        what = "resuming" if e.resumed else "training"
        self.console.print(
            f"[bold]{what}[/] {e.model} ({human(e.parameters)} parameters) on {e.device}\n"
            f"corpus {e.corpus}: {human(e.train_tokens)} train / {human(e.val_tokens)} val tokens, "
            f"{e.tokenizer} tokenizer, vocab {e.vocab_size}\n"
            f"BPTT: {e.batch_size} streams x {e.seq_len} tokens per chunk"
            + (f" x {e.world_size} processes" if e.world_size > 1 else "")
            + f", {e.steps_per_epoch} chunks per epoch; stop at "
            + " or ".join(s for s in (f"{e.max_steps} steps" if e.max_steps else "",
                                      f"{e.max_time:g} s" if e.max_time else "") if s)
            + f"\nrun directory {e.run_dir}", highlight=False)
        if self.plain:
            return
        by_steps = e.max_steps is not None and e.max_time is None
        self.progress = Progress(
            TextColumn("[bold blue]train"), BarColumn(),
            MofNCompleteColumn() if by_steps else TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=self.console)
        total = e.max_steps if by_steps else e.max_time
        self.by_steps = by_steps
        self.task = self.progress.add_task("train", total=total, completed=e.start_step if by_steps else 0,
                                           rate="")
        self.live = Live(self._renderable(), console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def _on_chunk(self, e: ChunkTrained) -> None:
        self.last_chunk = e
        self.recent.append(e.loss)
        self.clips += e.clipped
        self.skipped += e.skipped
        if self.plain:
            now = time.monotonic()
            if now - self._last_plain >= self.plain_every:
                self._last_plain = now
                self.console.print(self._chunk_line(e), highlight=False)
            return
        if self.progress is not None:
            budget = self.start.max_time if self.start else None
            if self.by_steps:
                completed = e.step
            else:
                completed = e.elapsed
                if self.start and self.start.max_steps and budget:
                    completed = max(e.elapsed, e.step / self.start.max_steps * budget)
                completed = min(completed, budget or completed)
            self.progress.update(self.task, completed=completed, rate=f"{human(e.tokens_per_s)} tok/s")
            self._refresh()

    def _on_eval(self, e: Evaluated) -> None:
        mark = " *" if e.best else ""
        self.evals.add_row(str(e.step), f"{e.train_loss:.4f}", f"{e.val_loss:.4f}{mark}",
                           f"{e.val_bpc:.4f}", f"{e.elapsed:.0f}s")
        if self.plain:
            self.console.print(f"eval step {e.step}: train {e.train_loss:.4f} | val {e.val_loss:.4f} "
                               f"nats/token | {e.val_bpc:.4f} bits/char | {e.elapsed:.0f}s{mark}",
                               highlight=False)
        else:
            self._refresh()

    def _on_sample(self, e: Sampled) -> None:
        self.last_sample = e
        if self.plain:
            self.console.print(self._sample_line(e), highlight=False, markup=False)
        else:
            self._refresh()

    @staticmethod
    def _sample_line(e: Sampled, width: int = 160) -> str:
        """'sample at step 500: the cat sat⏎on a ...' (one line: newlines shown as ⏎)."""
        text = e.text.replace("\r", "").replace("\n", "⏎")
        return f"sample at step {e.step}: {text[:width]}" + ("…" if len(text) > width else "")

    def _on_notice(self, e: Notice) -> None:
        style = "yellow" if e.level == "warning" else "cyan"
        self.console.print(f"[{style}]{e.message}[/]", highlight=False)

    def _on_grad_report(self, e: GradientReport) -> None:
        self.last_grad = e
        if self.plain:
            self.console.print(self._grad_line(e), highlight=False)
        else:
            self._refresh()

    @staticmethod
    def _grad_line(e: GradientReport) -> str:
        """'gradient horizon at step 400: h[0] 12, c[0] >63 steps' (None: beyond the chunk)."""
        h = e.horizons
        parts = [f"{k} {'>' + str(h.get('lags')) if v is None else v}" for k, v in h.items()
                 if k != "lags" and not k.startswith("decay_")]
        return f"gradient horizon at step {e.step}: {', '.join(parts)} steps"

    def _on_finish(self, e: Finished) -> None:
        self.close()
        best = (f"best val {e.best_val_loss:.4f} nats/token, {e.best_val_bpc:.4f} bits/char"
                if e.best_val_loss is not None else "no evaluation yet")
        # A run stopped before its first evaluation has no best.pt: name only what exists.
        saved = f"{e.run_dir}/last.pt" + (f", {e.run_dir}/best.pt" if e.best_val_loss is not None else "")
        self.console.print(f"[bold green]done[/] ({e.reason}) at step {e.step} after {e.elapsed:.0f}s; {best}\n"
                           f"checkpoints: {saved}", highlight=False)

    # -- rendering --------------------------------------------------------------------------------
    def _chunk_line(self, e: ChunkTrained) -> str:
        clip = f", clipped {self.clips}x" if self.clips else ""
        skip = f", skipped {self.skipped}" if self.skipped else ""
        return (f"step {e.step} | chunk loss {e.loss:.4f} | grad norm {e.grad_norm:.3f}{clip}{skip} | "
                f"lr {e.lr:.2e} | {human(e.tokens_per_s)} tok/s | {e.elapsed:.0f}s")

    def _renderable(self) -> Group:
        parts: list[Any] = []
        if self.progress is not None:
            parts.append(self.progress)
        if self.last_chunk is not None:
            e = self.last_chunk
            line = Text()
            line.append(f"step {e.step}  ", style="bold")
            line.append("chunk loss ")
            line.append(f"{e.loss:.4f} ", style="bold magenta")
            line.append(sparkline(list(self.recent)), style="magenta")
            line.append(f"  grad norm {e.grad_norm:.3f}")
            if self.clips:
                line.append(f" (clipped {self.clips}x)", style="yellow")
            if self.skipped:
                line.append(f" skipped {self.skipped}", style="red")
            line.append(f"  lr {e.lr:.2e}")
            parts.append(line)
        if getattr(self, "last_grad", None) is not None:
            parts.append(Text(self._grad_line(self.last_grad), style="cyan"))
        if self.evals.row_count:
            parts.append(self.evals)
        if self.last_sample is not None:
            parts.append(Panel(Text(self.last_sample.text.strip("\n")), title=f"sample at step {self.last_sample.step}",
                               title_align="left", expand=False))
        return Group(*parts)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._renderable())
