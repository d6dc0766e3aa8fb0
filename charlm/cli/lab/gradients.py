"""`charlm inspect-gradients`: how far back the gradient reaches, and its tables and chart.

The measurement is charlm.lab.gradients; the renderers below take its GradientStudy
(duck-typed, so this module never imports torch and `--help` stays fast)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text
from typing_extensions import Annotated

from ...config import check_seed
from ...plotting import check_plot_path
from ...threads import use
from ..app import (CONTEXT, app, cli_state, csv_option, get_console, handles_errors, json_option, say_written,
                   stdout_taken, threads_option, write_study)


@app.command("inspect-gradients", context_settings=CONTEXT)
@handles_errors
def inspect_gradients(
    checkpoint: Annotated[Optional[str], typer.Argument(
        help="Checkpoint file or run directory; omit to compare fresh models of each kind in --models.",
        show_default=False)] = None,
    corpus: Annotated[Optional[str], typer.Option(
        help="Text to take windows from (default: a checkpoint's own corpus; random tokens for fresh models).")] = None,
    models: Annotated[str, typer.Option(help="Fresh models to compare, comma-separated.")] = "rnn,lstm,gru",
    hidden_size: Annotated[int, typer.Option(help="Units per layer of the fresh models.")] = 384,
    layers: Annotated[int, typer.Option(help="Layers of the fresh models.")] = 1,
    embedding_size: Annotated[int, typer.Option(help="Embedding width of the fresh models.")] = 64,
    lags: Annotated[int, typer.Option(help="Steps to backpropagate through (the largest lag).")] = 100,
    samples: Annotated[int, typer.Option(help="Windows to aggregate over (geometric mean).")] = 32,
    warmup: Annotated[int, typer.Option(help="Tokens run before each window to give a realistic state.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed for weights and windows.")] = 0,
    json_out: Annotated[Optional[str], json_option("every number")] = None,
    csv_out: Annotated[Optional[str], csv_option("one row per lag")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw the curves to this .png or .svg file (needs matplotlib).")] = None,
    threads: Annotated[str, threads_option()] = "auto",
) -> None:
    """Measure ||dL/dh|| against lag: why a tanh RNN forgets and an LSTM remembers longer.

    The loss is at the last position of each window; the module runs one step at a time.

    Example: `charlm inspect-gradients --models rnn,lstm,gru --lags 200`

    Example: `charlm inspect-gradients runs/NAME --lags 200 --plot grads.png`
    """
    from ...lab.gradients import inspect_gradients as measure

    report = not stdout_taken(json_out, csv_out)   # the tables, unless a document takes stdout
    check_seed(seed)
    if plot is not None:
        check_plot_path(plot, "charlm inspect-gradients --plot")
    use(threads)
    study = measure(checkpoint=checkpoint, corpus=corpus, models=models.split(","),
                    hidden_size=hidden_size, layers=layers, embedding_size=embedding_size, lags=lags,
                    samples=samples, seed=seed, warmup=warmup)
    if plot is not None:
        from ...lab.gradients import plot_study

        plot_study(study, plot)
    write_study(study, json_out, csv_out)
    if not report:
        return
    console = get_console()
    if not cli_state["quiet"]:
        first = study.models[0]
        what = (f"checkpoint {checkpoint} ({first.cell} {first.layers}x{first.hidden_size}, trained "
                f"with k={first.chunk_length})" if checkpoint else
                f"fresh models {', '.join(m.name for m in study.models)} "
                f"({layers}x{hidden_size}, seed {seed})")
        console.print(f"[bold]gradient through time[/] of {what}\ninputs: {study.inputs}; loss at the "
                      f"last of {lags + 1} steps, {samples} windows, after {warmup} warm-up tokens",
                      highlight=False)
    console.print(gradient_lag_table(study))
    console.print(gradient_summary_table(study))
    if not cli_state["quiet"]:
        console.print(log_chart(study))
    say_written(console, json=json_out, csv=csv_out, plot=plot)


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


