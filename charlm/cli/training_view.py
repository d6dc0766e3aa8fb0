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

from .app import shown_path, silence_stdout
from ..events import (ChunkTrained, Evaluated, Event, Finished, GradientReport,
                     Notice, RunStarted, Sampled)


SPARK = "▁▂▃▄▅▆▇█"
# "train" is Evaluated.train_loss, one definition in the table and in the plain log alike.
EVAL_CAPTION = "train: mean chunk loss since the previous evaluation; * best val so far"
SPARK_MAX = 48        # the recent losses the sparkline shows, at most
SPARK_SCALE = 1000   # the sparkline's scale: the range of this many recent losses, slow to change
SPARK_MIN = 8         # narrower than this, the sparkline is left out rather than shown
RATE_SECONDS = 5.0    # tokens/s is smoothed over about this many seconds of training
SAMPLE_WIDTH = 80     # the sample panel's width (less on a narrower terminal), fixed for the run


def sparkline(values: Sequence[float], lo: Optional[float] = None, hi: Optional[float] = None) -> str:
    """One block per value, scaled to [lo, hi] (by default the values' own range). The view passes
    range of a long window of losses, so a bar's height means the same loss from one frame to the next."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    lo = min(finite) if lo is None else lo
    hi = max(finite) if hi is None else hi
    span = hi - lo or 1.0
    top = len(SPARK) - 1
    return "".join(SPARK[max(0, min(top, int((v - lo) / span * len(SPARK))))] if math.isfinite(v) else "!"
                   for v in values)


class Smoothed:
    """An exponential moving average in time: each new reading weighs by the training time it
    covers, so a rate that is measured per report interval does not swing from frame to frame."""

    def __init__(self, seconds: float = RATE_SECONDS):
        self.seconds = seconds
        self.value: Optional[float] = None

    def update(self, reading: float, dt: float) -> float:
        if not math.isfinite(reading):
            return self.value if self.value is not None else reading
        if self.value is None:
            self.value = reading
        else:
            weight = 1.0 - math.exp(-max(dt, 0.0) / self.seconds)
            self.value += weight * (reading - self.value)
        return self.value


def fit_fields(fields: Sequence[tuple[int, str, str]], width: int) -> list[tuple[str, str]]:
    """The (text, style) fields, in their order, that fit in width joined by two spaces: fields
    of lower priority (a larger number) are dropped whole first; a field is never cut."""
    keep = set()
    used = -2
    for i in sorted(range(len(fields)), key=lambda i: fields[i][0]):
        need = len(fields[i][1]) + 2
        if used + need <= width:
            keep.add(i)
            used += need
    return [(text, style) for i, (_, text, style) in enumerate(fields) if i in keep]


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
        self.chunks = 0           # chunks seen by this view (clips and skips are a share of them)
        self.skipped = 0
        # The sparkline's scale: the range of a long window, so a bar's height means about the same
        # loss from frame to frame (the first, untrained losses leave it after a while).
        self.scale_window: deque[float] = deque(maxlen=SPARK_SCALE)
        self.rate = Smoothed()
        self._rate_elapsed: Optional[float] = None
        self.last_chunk: Optional[ChunkTrained] = None
        self.last_sample: Optional[Sampled] = None
        self.start: Optional[RunStarted] = None
        self.evals = Table(title="evaluations", expand=False, header_style="bold", caption=EVAL_CAPTION)
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
            + f"\nrun directory {shown_path(e.run_dir)}", highlight=False)
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
        self.chunks += 1
        self.clips += e.clipped
        self.skipped += e.skipped
        if math.isfinite(e.loss):
            self.scale_window.append(e.loss)
        dt = 0.0 if self._rate_elapsed is None else e.elapsed - self._rate_elapsed
        self._rate_elapsed = e.elapsed
        self.rate.update(e.tokens_per_s, dt)
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
            self.progress.update(self.task, completed=completed, rate=self._rate_text())
            self._refresh()

    def _on_eval(self, e: Evaluated) -> None:
        mark = " *" if e.best else ""
        self.evals.add_row(str(e.step), f"{e.train_loss:.4f}", f"{e.val_loss:.4f}{mark}",
                           f"{e.val_bpc:.4f}", f"{e.elapsed:.0f}s")
        if self.plain:
            self.console.print(f"eval step {e.step}: train {e.train_loss:.4f} (mean since last eval) | val {e.val_loss:.4f} "
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
        run_dir = shown_path(e.run_dir)
        saved = f"{run_dir}/last.pt" + (f", {run_dir}/best.pt" if e.best_val_loss is not None else "")
        self.console.print(f"[bold green]done[/] ({e.reason}) at step {e.step} after {e.elapsed:.0f}s; {best}\n"
                           f"checkpoints: {saved}", highlight=False)

    # -- rendering --------------------------------------------------------------------------------
    def _rate_text(self) -> str:
        return f"{human(self.rate.value)} tok/s" if self.rate.value is not None else ""

    def _share(self, count: int) -> str:
        """A count of chunks as a share of those seen, e.g. '12% of steps' ('<1%' when rare)."""
        pct = 100 * count / max(self.chunks, 1)
        return f"{pct:.0f}% of steps" if pct >= 1 else "<1% of steps"

    def _chunk_line(self, e: ChunkTrained) -> str:
        clip = f", clipped {self._share(self.clips)}" if self.clips else ""
        skip = f", skipped {self.skipped} so far" if self.skipped else ""
        return (f"step {e.step} | chunk loss {e.loss:.4f} | grad norm {e.grad_norm:.3f}{clip}{skip} | "
                f"lr {e.lr:.2e} | {self._rate_text()} | {e.elapsed:.0f}s")

    def _step_line(self, e: ChunkTrained, width: int) -> Text:
        """The live step line, fitted to width: fields are dropped whole, by priority, never cut
        or wrapped. The sparkline is a field at least SPARK_MIN wide that takes the room left."""
        spark = " " * SPARK_MIN      # a stand-in while fitting; the style marks it
        fields = [(0, f"step {e.step}", "bold"), (0, f"loss {e.loss:.4f}", "bold magenta"),
                  (2, spark, "spark"), (1, f"grad norm {e.grad_norm:.3f}", "")]
        if self.skipped:
            fields.append((1, f"skipped {self.skipped} so far", "red"))
        if self.clips:
            fields.append((2, f"clipped {self._share(self.clips)}", "yellow"))
        fields.append((3, f"lr {e.lr:.2e}", ""))
        shown = fit_fields(fields, width)
        left = width - (sum(len(t) for t, _ in shown) + 2 * (len(shown) - 1))
        line = Text(no_wrap=True, overflow="crop")
        for i, (text, style) in enumerate(shown):
            if style == "spark":
                lo, hi = (min(self.scale_window), max(self.scale_window)) if self.scale_window else (None, None)
                text, style = sparkline(list(self.recent)[-min(SPARK_MIN + left, SPARK_MAX):], lo, hi), "magenta"
            line.append(("  " if i else "") + text, style=style)
        return line

    def _renderable(self) -> Group:
        parts: list[Any] = []
        if self.progress is not None:
            parts.append(self.progress)
        if self.last_chunk is not None:
            parts.append(self._step_line(self.last_chunk, self.console.width))
        if getattr(self, "last_grad", None) is not None:
            parts.append(Text(self._grad_line(self.last_grad), style="cyan"))
        if self.evals.row_count:
            parts.append(self.evals)
        if self.last_sample is not None:
            # A fixed width: the panel does not grow and shrink with each evaluation's text.
            parts.append(Panel(Text(self.last_sample.text.strip("\n")), title=f"sample at step {self.last_sample.step}",
                               title_align="left", width=min(self.console.width, SAMPLE_WIDTH)))
        return Group(*parts)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._renderable())
