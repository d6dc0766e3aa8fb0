"""Rich renderables for the terminal: the live training view, tables, terminal charts.

Only this module and cli.py know about Rich. The training view consumes the core's events; when
the output is not a terminal it prints plain periodic lines instead of redrawing.
"""

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


def metrics_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(title=title, header_style="bold")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    return table


def kv_table(title: str, rows: Sequence[Sequence[Any]], show_lines: bool = False) -> Table:
    """Two left-aligned columns (label, value) for `info`-style reports; long values fold."""
    table = Table(title=title, show_header=False, show_lines=show_lines, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(str(label), str(value))
    return table


def compact_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                  text_columns: int = 1, flexible: int = -1) -> Table:
    """A wide listing (`charlm runs`) without vertical rules, so it fits 80 columns.

    The first ``text_columns`` are left-aligned; column ``flexible`` (a file name) is cut to 14
    characters with an ellipsis, so the numbers keep their room.
    """
    from rich import box

    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, title_justify="left",
                  collapse_padding=True, pad_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i < text_columns else "right", no_wrap=True,
                         overflow="ellipsis", max_width=14 if i == flexible else None)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    return table


# ---------------------------------------------------------------------------------------------
# inspect-gradients: a table by lag bucket, a summary per model, and a terminal chart.
# They take a charlm.gradients.GradientStudy (duck-typed here, so display never imports torch).

CURVE_STYLES = [("●", "red"), ("▲", "green"), ("■", "blue"), ("◆", "magenta"), ("✚", "cyan"),
                ("✖", "yellow"), ("○", "bright_red"), ("△", "bright_green"), ("□", "bright_blue")]


def lag_buckets(n: int) -> list[int]:
    """0, 1, 2, 5, 10, 20, 50, ... up to n, and n itself."""
    out, base = [0], 1
    while base <= n:
        out += [m * base for m in (1, 2, 5) if m * base <= n]
        base *= 10
    if out[-1] != n:
        out.append(n)
    return out


def _curve_name(model, curve) -> str:
    layer = f"[{curve.layer}]" if model.layers > 1 else ""
    return f"{model.name} {curve.state}{layer}"


def _sci(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return "0" if x == 0 else f"{x:.1e}"


def gradient_lag_table(study) -> Group:
    """The relative norm at lags 0, 1, 2, 5, 10, ..., one column per model, layer and state."""
    curves = [(m, c) for m in study.models for c in m.curves]
    table = Table(header_style="bold")
    table.add_column("lag", justify="right")
    for m, c in curves:
        table.add_column(_curve_name(m, c), justify="right")
    beyond_k = False
    for lag in lag_buckets(study.lags):
        cells = []
        for m, c in curves:
            text = _sci(c.relative[lag])
            if m.chunk_length and lag >= m.chunk_length:
                text, beyond_k = f"[dim]{text}†[/]", True
            cells.append(text)
        table.add_row(str(lag), *cells)
    # Notes below the table rather than as its caption: a caption wraps to the table's width.
    notes = f"geometric mean over {study.samples} windows; spread (p10, p90) in --json/--csv"
    if beyond_k:
        ks = ", ".join(sorted({str(m.chunk_length) for m in study.models if m.chunk_length}))
        notes += (f"\n† lag >= the training chunk length k={ks}: training never sent a gradient "
                  f"this far back")
    return Group(Text("gradient norm by lag, relative to lag 0", style="bold"), table,
                 Text(notes, style="dim"))


def gradient_summary_table(study) -> Table:
    from rich import box

    table = Table(title="summary", header_style="bold", title_justify="left", caption_justify="left",
                  box=box.SIMPLE_HEAD)
    for col in ("model", "lag 0", "decay/step", "horizon", "explodes", "σmax W_hh", "Pascanu"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in study.models:
        for c in m.curves:
            spec = [s for s in m.spectral if s["layer"] == c.layer]
            if not spec:   # minGRU/minLSTM: no recurrent matrix, the gates read the input only
                sigma, cond = "-", "n/a"
            elif len(spec) == 1:
                s = spec[0]
                sigma, cond = f"{s['sigma_max']:.3f}", s["condition"]
            else:  # gated: the largest gate block here, each block in --json; condition n/a
                sigma, cond = f"{max(s['sigma_max'] for s in spec):.3f}*", "n/a"
            horizon = str(c.horizon) if c.horizon is not None else f"beyond {study.lags}"
            if m.chunk_length:
                horizon += f" (k={m.chunk_length})"
            table.add_row(_curve_name(m, c), _sci(c.gmean[0]),
                          f"×{c.decay_per_step:.3f}" if math.isfinite(c.decay_per_step) else "-",
                          horizon, "[red]yes[/]" if c.explodes else "no", sigma, cond)
    table.caption = ("horizon: first lag below 1e-3 of lag 0; decay/step: exp(slope of ln norm)\n"
                     "Pascanu et al. 2013: σmax(W_hh) < 1/γ (γ = max|tanh'| = 1) suffices for\n"
                     "vanishing; it does not bound gated cells (their cell path bypasses W_hh);\n"
                     "* the largest gate block (every block in --json)")
    return table


def log_chart(study, width: int = 64, height: int = 14) -> Text:
    """log10 of the relative norm against lag, one marker per curve, in plain characters."""
    curves = [(m, c) for m in study.models for c in m.curves]
    logs = [[math.log10(v) if v and v > 0 and math.isfinite(v) else None for v in c.relative]
            for _, c in curves]
    finite = [v for series in logs for v in series if v is not None]
    top = max(0.0, math.ceil(max(finite, default=0.0)))
    bottom = math.floor(min(finite, default=-1.0))
    bottom = max(bottom, top - 300) if bottom < top else top - 1
    n = study.lags
    grid = [[" "] * width for _ in range(height)]
    styles = [[None] * width for _ in range(height)]

    def row_of(y: float) -> int:
        return min(height - 1, max(0, round((top - y) / (top - bottom) * (height - 1))))

    threshold = math.log10(1e-3)
    if bottom <= threshold <= top:
        r = row_of(threshold)
        for x in range(width):
            grid[r][x], styles[r][x] = "·", "dim"
    for m in study.models:
        if m.chunk_length and m.chunk_length <= n:
            x = round(m.chunk_length / n * (width - 1))
            for r in range(height):
                if grid[r][x] == " ":
                    grid[r][x], styles[r][x] = "┊", "dim"
    for i, series in enumerate(logs):
        mark, colour = CURVE_STYLES[i % len(CURVE_STYLES)]
        for x in range(width):
            v = series[round(x / (width - 1) * n)]
            if v is not None:
                r = row_of(v)
                grid[r][x], styles[r][x] = mark, colour
    label_w = max(len(f"1e{top}"), len(f"1e{bottom}")) + 1
    text = Text()
    text.append("log10 ||dL/dh|| relative to lag 0\n", style="bold")
    for r in range(height):
        y = top - r / (height - 1) * (top - bottom)
        label = f"1e{round(y)}" if r in (0, height // 2, height - 1) else ""
        text.append(label.rjust(label_w) + " │")
        for x in range(width):
            text.append(grid[r][x], style=styles[r][x])
        text.append("\n")
    text.append(" " * label_w + " └" + "─" * width + "\n")
    axis = f"0{'lag'.center(width - len(str(n)) - 1)}{n}"
    text.append(" " * (label_w + 2) + axis + "\n")
    for i, (m, c) in enumerate(curves):
        mark, colour = CURVE_STYLES[i % len(CURVE_STYLES)]
        text.append(f"  {mark} ", style=colour)
        text.append(_curve_name(m, c))
    text.append("   · 1e-3 threshold", style="dim")
    if any(m.chunk_length for m in study.models):
        text.append("   ┊ training chunk k", style="dim")
    return text


def truncation_table(result) -> Table:
    """Echo accuracy by model and distance D (rows) and chunk length k (columns).

    Takes a charlm.synthetic.GridResult. Cells where k <= D (no chunk holds both the key and its
    echo, so no gradient connects them) are marked with a dot.
    """
    chance = result.chance
    table = Table(title=f"echo accuracy (chance {chance:.1%})",
                  header_style="bold", title_justify="left", caption_justify="left")
    table.add_column("model")
    table.add_column("D", justify="right")
    for k in result.chunks:
        table.add_column(f"k={k}", justify="right")
    for cell in result.models:
        for d in result.distances:
            row = []
            for k in result.chunks:
                c = result.get(cell, d, k)
                if c is None:
                    row.append("")
                    continue
                style = "green" if c.accuracy >= 0.9 else ("yellow" if c.accuracy >= 2 * chance else "dim")
                cut = "·" if k <= d else " "
                row.append(f"[{style}]{c.accuracy:.0%}[/]{cut}")
            table.add_row(cell, str(d), *row)
        if cell != result.models[-1]:
            table.add_section()
    table.caption = (f"· k <= D: no chunk holds both the key and its echo, so no gradient links them.\n"
                     f"{result.steps} steps per cell, {result.hidden_size} units, {result.batch_size} "
                     f"streams,\nlr {result.lr:g}, seed {result.seed}; {result.seconds / 60:.1f} min")
    return table


# ---------------------------------------------------------------------------------------------
# score: the text coloured by surprisal, a legend, the totals, and the most surprising positions.
# It takes a charlm.scoring.ScoreResult (duck-typed).

SURPRISAL_STYLES = [(1.0, "green", "<1"), (2.0, "yellow", "1-2"), (4.0, "dark_orange", "2-4"),
                    (8.0, "red", "4-8"), (math.inf, "bold magenta", "8+")]


def _surprisal_style(bits: Optional[float]) -> str:
    if bits is None:
        return "dim"
    return next(style for limit, style, _ in SURPRISAL_STYLES if bits < limit)


def _shown(s: str) -> str:
    """A token or character as a table cell: visible whitespace, escaped control characters."""
    s = s.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "␣")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s)


def _percent(p: float) -> str:
    return f"{p:.0%}" if p >= 0.01 else f"{p:.1%}" if p >= 0.001 else "<0.1%"


def _guesses(guesses) -> str:
    return "  ".join(f"{_shown(s)} {_percent(p)}" for s, p in guesses) if guesses else ""


def score_view(result, rows: int = 20) -> Group:
    """The `charlm score` report for a terminal (colours drop away when piped)."""
    text = Text()
    for ch, bits in zip(result.text, result.bits):
        style = _surprisal_style(bits)
        if ch.isspace() and ch != "\n" and bits is not None and bits >= 2:
            style += " underline"  # a surprising space would be invisible otherwise
        text.append(ch, style=style)
    legend = Text("bits: ", style="bold")
    for _, style, label in SURPRISAL_STYLES:
        legend.append("██", style=style).append(f" {label}  ")
    legend.append("░░", style="dim").append(" no prediction (the first token)")
    summary = Text(f"{result.total_bits:.1f} bits over {result.scored_chars:,.0f} predicted characters "
                   f"({result.tokens:,} tokens): {result.bits_per_char:.3f} bits/char")
    parts: list[Any] = [text, Text(""), legend, summary]
    if result.unknown_chars:
        parts.append(Text("not in the vocabulary (scored as <unk>): "
                          + " ".join(_shown(c) for c in result.unknown_chars[:20]), style="yellow"))
    if result.next:
        parts.append(Text(f"next: {_guesses(result.next)}"))
    scored = [i for i, b in enumerate(result.bits) if b is not None]
    shown = sorted(sorted(scored, key=lambda i: -result.bits[i])[:max(rows, 0)])
    if shown:
        title = "every position" if len(shown) == len(scored) else f"the {len(shown)} most surprising positions"
        table = Table(title=title, header_style="bold", title_justify="left")
        for col, justify in (("pos", "right"), ("char", "left"), ("bits", "right"), ("expected", "left")):
            table.add_column(col, justify=justify)
        for i in shown:
            table.add_row(str(i), Text(_shown(result.text[i]), style=_surprisal_style(result.bits[i])),
                          f"{result.bits[i]:.2f}", Text(_guesses(result.top[i])))
        parts += [Text(""), table]
    return Group(*parts)


# inspect-context: a headline, the figures, the curves by n, and a bar chart of the excess loss.
# They take a charlm.context.ContextStudy (duck-typed, so display never imports torch).

def _tokens(n: Optional[int], beyond: int) -> str:
    return f"beyond {beyond}" if n is None else str(n)


def context_headline(study) -> str:
    """'trained with k = 64, gradient horizon 34, uses about 256 tokens' (what is known of it)."""
    m = study.model
    parts = []
    if m.get("chunk_length"):
        parts.append(f"trained with k = {m['chunk_length']}")
    if m.get("gradient_lags"):
        parts.append(f"gradient horizon {_tokens(m.get('gradient_horizon'), m['gradient_lags'])}")
    uses = (f"uses about {study.effective_context} token{'' if study.effective_context == 1 else 's'}" if study.effective_context is not None
            else f"uses more than {study.max_context} tokens")
    return ", ".join(parts + [uses])


def context_summary_table(study) -> Table:
    from rich import box

    table = Table(show_header=False, box=box.SIMPLE_HEAD, title="summary", title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right")
    table.add_column(style="dim")
    m = study.model
    tol = f"{study.tolerance:.1%} of it"
    rows = [("full-history loss", f"{study.full_loss:.4f}", f"nats/token, accuracy {study.full_accuracy:.1%}"),
            ("effective context", _tokens(study.effective_context, study.max_context),
             f"first n with loss within {tol}"),
            ("replace horizon", _tokens(study.replace_horizon, study.max_context),
             "first d: the past beyond it replaced, loss within tolerance")]
    if study.shuffle:
        rows.append(("shuffle horizon", _tokens(study.shuffle_horizon, study.shuffle_max),
                     "first d: the past beyond it shuffled, loss within tolerance"))
    if m.get("chunk_length"):
        rows.append(("training chunk k", str(m["chunk_length"]), "BPTT(k): no gradient reached further"))
    if m.get("gradient_lags"):
        per = ", ".join(f"{k} {_tokens(v, m['gradient_lags'])}" for k, v in m.get("gradient_horizons", {}).items())
        rows.append(("gradient horizon", _tokens(m.get("gradient_horizon"), m["gradient_lags"]),
                     f"first lag below 1e-3 of lag 0 ({per})"))
    c = study.cost
    rows.append(("cost", f"{c['token_steps_per_target']:,.0f}",
                 f"token-steps per target ({c['naive_token_steps_per_target']:,} unshared), "
                 f"{c['seconds']:.1f}s" + (f" + {c['gradient_seconds']:.1f}s gradient" if "gradient_seconds" in c else "")))
    for row in rows:
        table.add_row(*row)
    return table


def context_curve_table(study) -> Table:
    """Loss per context n, and the loss increase when the past beyond d = n is replaced/shuffled."""
    from rich import box

    table = Table(title="loss by context n (and by intact distance d = n)", header_style="bold",
                  box=box.SIMPLE_HEAD, title_justify="left", caption_justify="left")
    for col in ("n", "loss", "+ vs full", "± se", "accuracy", "replaced +", "shuffled +"):
        table.add_column(col, justify="right")
    replace = {p["distance"]: p for p in study.replace}
    shuffle = {p["distance"]: p for p in study.shuffle}
    bound = study.tolerance * abs(study.full_loss)
    for p in study.curve:
        n = p["context"]
        mark = " ◀" if n == study.effective_context else ""
        style = "green" if p["increase"] <= bound else ""
        inc = f"[{style}]{p['increase']:+.4f}[/]" if style else f"{p['increase']:+.4f}"
        se = f"{p['stderr']:.4f}" if p["stderr"] is not None and math.isfinite(p["stderr"]) else "-"
        r, s = replace.get(n), shuffle.get(n)
        table.add_row(f"{n}{mark}", f"{p['loss']:.4f}", inc, se, f"{p['accuracy']:.1%}",
                      f"{r['increase']:+.4f}" if r else "", f"{s['increase']:+.4f}" if s else "")
    table.caption = (f"+: mean loss increase over the full-history loss {study.full_loss:.4f}, paired over "
                     f"{study.targets} targets;\n◀ the effective context (first n within "
                     f"{study.tolerance:.1%}); green: within tolerance")
    return table


def context_chart(study, width: int = 48) -> Text:
    """One bar per n: the loss increase over full history, given only the last n tokens."""
    text = Text()
    text.append("loss increase over full history, given only the last n tokens\n", style="bold")
    top = max([p["increase"] for p in study.curve if math.isfinite(p["increase"])] + [1e-12])
    bound = study.tolerance * abs(study.full_loss)
    label_w = len(str(study.max_context))
    k = study.model.get("chunk_length")
    for p in study.curve:
        inc = max(0.0, p["increase"])
        cells = inc / top * width
        eighths = int((cells % 1) * 8)                                 # a partial last cell
        bar = "█" * int(cells) + ("▏▎▍▌▋▊▉"[eighths - 1] if eighths else "")
        text.append(f"{str(p['context']).rjust(label_w)} │")
        text.append(bar or "·", style="green" if p["increase"] <= bound else "cyan")
        text.append(f" {p['increase']:+.3f}")
        if k and p["context"] >= k > p["context"] // 2:
            text.append("  ← training chunk k", style="dim")
        text.append("\n")
    return text


def context_report(study, verbose: bool = True) -> Group:
    parts: list[Any] = [Text(context_headline(study), style="bold")]
    if verbose:
        parts.append(Text(f"inputs: {study.inputs}; {study.targets} targets"
                          + (f" every {study.spacing} tokens" if study.spacing else "")
                          + f" of {study.text_tokens:,}; full history = at least {study.lead} tokens "
                            f"of carried state", style="dim"))
    parts += [context_summary_table(study), context_curve_table(study)]
    if verbose:
        parts.append(context_chart(study))
    return Group(*parts)
