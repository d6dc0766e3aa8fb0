"""`charlm info`, `charlm runs`, `charlm plot`: look inside checkpoints and run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from typing_extensions import Annotated

from ..plotting import check_plot_path, plot_runs
from .app import CONTEXT, app, get_console, handles_errors, json_option, shown_path, stdout_taken, write_document
from .tables import compact_table, kv_table


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


@app.command(context_settings=CONTEXT)
@handles_errors
def info(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory (its best.pt).")],
    json_out: Annotated[Optional[str], json_option("every figure")] = None,
) -> None:
    """What is inside a checkpoint: model, tokenizer, progress, corpus, device, versions.

    Examples: `charlm info runs/NAME`, `charlm info runs/NAME/last.pt --json -`.
    """
    from ..runinfo import checkpoint_info, info_rows

    d = checkpoint_info(checkpoint)
    if json_out is not None:
        write_document({"schema": "charlm.info/1", **d}, json_out)
        if stdout_taken(json_out):
            return

    rows = [[label, escape(text)] for label, text in info_rows(d)]  # a checkpoint's strings are data, not markup
    get_console().print(kv_table(f"charlm info {escape(checkpoint)}", rows))


# `charlm runs` columns, and which to leave out first on a narrow terminal (a larger number).
RUN_COLUMNS = ["run", "model", "corpus", "steps", "val loss", "bpc", "time", "status"]
RUN_PRIORITY = [0, 3, 6, 2, 0, 1, 5, 4]


@app.command(context_settings=CONTEXT)
@handles_errors
def runs(
    folder: Annotated[Optional[Path], typer.Argument(
        help="Folder of run directories (or one run). Default: runs/ and the current folder's "
             "subfolders that are charlm runs.", show_default=False)] = None,
    json_out: Annotated[Optional[str], json_option("the list of runs")] = None,
) -> None:
    """List run directories with their best validation figures (reads metrics.jsonl, not weights).

    Examples: `charlm runs`, `charlm runs experiments/ --json -`.
    """
    from ..runinfo import find_default_runs, find_runs, run_summary

    if folder is None:
        found, looked = find_default_runs()
        where, base = " and ".join(looked), Path(".")
    else:
        found, where, base = find_runs(folder), str(folder), folder
    summaries = [run_summary(d) for d in found]
    if json_out is not None:
        write_document({"schema": "charlm.runs/1", "folder": str(folder if folder is not None else "."),
                        "runs": summaries}, json_out)
        if stdout_taken(json_out):
            return
    if not summaries:
        get_console().print(f"no run directories in {where}", markup=False, soft_wrap=True)
        return
    _print_runs(summaries, base, where)


def _print_runs(summaries: list[dict], base: Path, where: str) -> None:
    def short(run: str) -> str:  # the run's path below the folder: "lstm" rather than "runs/lstm"
        p = Path(run)
        return str(p.relative_to(base)) if p != base and p.is_relative_to(base) else p.name

    rows = [[escape(short(s["run"])), escape(s["model"] or "-"), escape(Path(str(s["corpus"])).name) if s["corpus"] else "-",
             _fmt(s["step"]), _fmt(s["best_val_loss"]), _fmt(s["best_val_bpc"]),
             f"{s['elapsed_s']:.0f}s" if s["elapsed_s"] is not None else "-",
             "done" if s["status"] in ("max_steps", "max_time", "epochs") else escape(s["status"])]
            for s in summaries]
    console = get_console()
    console.print(compact_table(f"runs in {escape(where)}", RUN_COLUMNS, rows, text_columns=3,
                                priorities=RUN_PRIORITY, width=console.width))
    for s in summaries:  # what was skipped in a damaged run, one line per run
        if s.get("notes"):
            console.print(f"note: {short(s['run'])}: {s['notes']}", markup=False, soft_wrap=True)


@app.command(context_settings=CONTEXT)
@handles_errors
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Image to write (.png, .svg or .pdf).")] = Path("curves.png"),
    title: Annotated[Optional[str], typer.Option(help="Figure title.")] = None,
) -> None:
    """Draw train/val loss and bits/char against steps and wall time (needs the `plot` extra).

    Example: `charlm plot runs/lstm runs/gru -o curves.png`.
    """
    check_plot_path(output, "charlm plot", "--output")
    path = plot_runs(run_dirs, output, title=title)
    typer.echo(shown_path(path))
