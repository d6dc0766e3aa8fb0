"""`charlm truncation-table`: echo accuracy of tiny models trained with BPTT(k), and its table.

The experiment is charlm.lab.truncation; the table takes its GridResult (duck-typed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text
from typing_extensions import Annotated

from ...errors import ConfigError
from ..app import (CONTEXT, app, cli_state, get_console, handles_errors, json_option, stdout_taken,
                   write_document)


def _int_list(option: str, value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} takes whole numbers separated by commas, got {value!r}") from None


@app.command("truncation-table", context_settings=CONTEXT)
@handles_errors
def truncation_table(
    models: Annotated[str, typer.Option(help="Cells to train, comma-separated.")] = "rnn,lstm,gru",
    distances: Annotated[str, typer.Option(help="Echo distances D, comma-separated.")] = "5,10,20,40",
    chunks: Annotated[str, typer.Option(help="BPTT chunk lengths k, comma-separated.")] = "8,16,32,64",
    steps: Annotated[int, typer.Option(help="Optimizer steps per cell (the same for every k).")] = 800,
    hidden_size: Annotated[int, typer.Option(help="Units of each tiny model.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Parallel streams per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-2,
    keys: Annotated[int, typer.Option(help="Distinct key symbols (chance = 1/keys).")] = 8,
    seeds: Annotated[str, typer.Option(
        help="Seeds for corpora and weights, comma-separated: the grid is trained once per seed and "
             "each cell shows the mean and the range.")] = "0,1,2",
    workdir: Annotated[Optional[Path], typer.Option(help="Keep the corpora and run directories here.")] = None,
    json_out: Annotated[Optional[str], json_option("every cell")] = None,
) -> None:
    """Echo accuracy of tiny models trained with BPTT(k), for every model x distance D x chunk k.

    With k <= D no gradient links the key to its echo. The default grid: ~5 CPU minutes.

    Example: `charlm truncation-table --models lstm --distances 10 --chunks 8,16`.
    """
    from ...lab.truncation import truncation_grid

    report = not stdout_taken(json_out)
    console = get_console(stderr=not report)   # progress lines on stderr when stdout is the JSON's

    def progress(c, done: int, total: int) -> None:
        if not cli_state["quiet"]:
            console.print(f"[{done}/{total}] seed {c.seed} {c.cell} D={c.distance} k={c.chunk}: echo accuracy "
                          f"{c.accuracy:.1%}, echo loss {c.echo_loss:.3f} nats ({c.seconds:.0f}s)",
                          highlight=False)

    result = truncation_grid(models=[m.strip() for m in models.split(",") if m.strip()],
                             distances=_int_list("--distances", distances),
                             chunks=_int_list("--chunks", chunks), hidden_size=hidden_size,
                             batch_size=batch_size, steps=steps, keys=keys, seeds=_int_list("--seeds", seeds), lr=lr,
                             workdir=workdir, on_cell=progress)
    if json_out is not None:
        write_document(result.to_json(), json_out)
    if report:
        console.print(render_table(result))


def render_table(result) -> Group:
    """Echo accuracy by model and distance D (rows) and chunk length k (columns): the mean over
    the seeds and, with more than one, the lowest and highest (``55 22-94``).

    Takes a charlm.lab.truncation.GridResult. Cells where k <= D (no chunk holds both the key and
    its echo, so no gradient connects them) are marked with a dot; the colour follows the lowest
    seed, so a green cell is learnt by every seed.
    """
    chance, several = result.chance, len(result.seeds) > 1
    table = Table(title=f"echo accuracy % (chance {chance:.1%})",
                  header_style="bold", title_justify="left", caption_justify="left")
    table.add_column("model")
    table.add_column("D", justify="right")
    for k in result.chunks:
        table.add_column(f"k={k}", justify="right")
    for cell in result.models:
        for d in result.distances:
            row = []
            for k in result.chunks:
                figures = result.summary(cell, d, k)
                if figures is None:
                    row.append("")
                    continue
                mean, low, high = figures
                style = "green" if low >= 0.9 else ("yellow" if low >= 2 * chance else "dim")
                cut = "·" if k <= d else " "
                spread = f" {low * 100:.0f}-{high * 100:.0f}" if several else ""
                row.append(f"[{style}]{mean * 100:.0f}{spread}[/]{cut}")
            table.add_row(cell, str(d), *row)
        if cell != result.models[-1]:
            table.add_section()
    seeds = ", ".join(str(s) for s in result.seeds)
    # Under the table at the console's width, not wrapped to the table's.
    notes = Text((f"mean and range (lowest-highest) over {len(result.seeds)} seeds; " if several else "")
                 + "· k <= D: no chunk holds both the key and its echo, so no gradient links them.\n"
                 f"{result.steps} steps per cell, {result.hidden_size} units, {result.batch_size} streams, "
                 f"lr {result.lr:g}, seeds {seeds}; {result.seconds / 60:.1f} min", style="dim")
    return Group(table, notes)
