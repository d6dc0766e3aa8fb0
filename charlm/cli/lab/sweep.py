"""`charlm sweep`: the same run across a grid of options, one run directory per point, one table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from typing_extensions import Annotated

from ...plotting import check_plot_path
from ..app import (CONTEXT, app, cli_state, get_console, handles_errors, json_option, stdout_taken,
                   write_document)
from ..tables import compact_table
from ..train import options_signature
from ..training_view import TrainingView


class SweepView:
    """One live training view per grid point, a header line before each."""

    def __init__(self, console, quiet: bool):
        self.console, self.quiet, self.view = console, quiet, None

    def __call__(self, event) -> None:
        if event.kind == "sweep_point":
            self.close()
            verb = "resuming" if event.resumed else "training"
            self.console.print(f"[bold][{event.index}/{event.total}][/] {verb} {escape(event.name)}")
            self.view = TrainingView(self.console, quiet=self.quiet)
        elif self.view is not None:
            self.view(event)
        elif event.kind == "notice" and not self.quiet:
            self.console.print(escape(event.message), highlight=False)

    def close(self) -> None:
        if self.view is not None:
            self.view.close()
            self.view = None


def _fmt(x: Optional[float], digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def sweep_table(result, inspect: bool):
    axes = list(result.axes)
    columns = axes + ["val", "best", "bpc", "tok/s", "steps"]
    if inspect:
        columns += ["horizon", "context"]
    rows = []
    for p in result.points:
        row = [escape(str(p.values[a])) for a in axes]
        row += [_fmt(p.final_val_loss), _fmt(p.best_val_loss), _fmt(p.best_val_bpc),
                "-" if p.tokens_per_s is None else f"{p.tokens_per_s:,.0f}", "-" if p.steps is None else f"{p.steps:,}"]
        if inspect:
            row += ["-" if p.gradient_horizon is None else str(p.gradient_horizon),
                    "-" if p.effective_context is None else str(p.effective_context)]
        rows.append(row)
    table = compact_table(f"sweep {escape(result.folder)}", columns, rows, text_columns=len(axes))
    table.caption = ("val: the last validation loss, best: the lowest (nats/token); bpc: the best's bits/char"
                     + ("; horizon: gradient horizon, context: effective context (tokens)" if inspect else ""))
    return table


@app.command(context_settings=CONTEXT)
@handles_errors
@options_signature(fixed=4, leave_out=("resume", "force"))      # grid, inspect, json_out, plot
def sweep(
    grid: Annotated[list[str], typer.Option(
        "--grid", metavar="<name=v1,v2>", show_default=False,
        help="An axis: a train option and its values (repeat for more axes; every combination runs).")],
    inspect: Annotated[bool, typer.Option(
        "--inspect", metavar="", help="Also measure each run's gradient horizon and effective context.")] = False,
    json_out: Annotated[Optional[str], json_option("every point's values and figures")] = None,
    plot: Annotated[Optional[Path], typer.Option(
        help="Draw the best validation loss against each axis to this file (needs matplotlib).")] = None,
    **options: Any,
) -> None:
    """Train the same run at every point of a grid (same seed, same budget), then one table.

    Every point is a run directory under --out (default: a new runs/sweep-DATE-TIME). A rerun of
    the same command skips the points that finished and resumes one that was cut short. Every run
    needs a budget: --max-steps, --max-time or --epochs.

    Example: `charlm sweep input.txt --grid seq_len=16,64 --grid model=lstm,gru --epochs 1`
    """
    from ...lab.sweep import parse_grid, run_sweep

    axes = parse_grid(grid)
    if plot is not None:
        check_plot_path(plot, "charlm sweep --plot")
    base = {k: v for k, v in options.items() if v is not None}
    folder = Path(base.pop("out", None) or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    to_stdout = stdout_taken(json_out)
    console = get_console()
    view = SweepView(console, quiet=cli_state["quiet"] or to_stdout)
    try:
        result = run_sweep(axes, base, folder, on_event=view, inspect=inspect)
    finally:
        view.close()
    if json_out is not None:
        write_document(result.to_json(), json_out)
    if plot is not None:
        from ...lab.sweep import plot_sweep

        plot_sweep(result, plot)
    if not to_stdout:
        console.print(sweep_table(result, inspect))
        if plot is not None:
            console.print(f"wrote plot {plot}", highlight=False)
