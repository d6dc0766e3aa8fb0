"""`charlm inspect-attention`: what a transformer run's heads look at, and its report.

The measurement is charlm.lab.attention; the renderer below takes its study (duck-typed, so this
module never imports torch)."""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text
from typing_extensions import Annotated

from ...threads import use
from ..app import (CONTEXT, app, cli_state, csv_option, device_option, get_console, handles_errors,
                   json_option, say_written, stdout_taken, text_file_argument, threads_option, write_study)


@app.command("inspect-attention", context_settings=CONTEXT)
@handles_errors
def inspect_attention(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file of a transformer, or its run directory (best.pt).")],
    text_file: Annotated[Optional[str], text_file_argument()] = None,
    chars: Annotated[Optional[int], typer.Option(
        help="Read the first this many characters of the text (default 20,000; at most 200,000).",
        show_default=False)] = None,
    threads: Annotated[str, threads_option()] = "auto",
    device: Annotated[str, device_option()] = "cpu",
    json_out: Annotated[Optional[str], json_option("every head's figures")] = None,
    csv_out: Annotated[Optional[str], csv_option("one row per head")] = None,
) -> None:
    """What a transformer's heads look at: how far back each one reaches, how much it keeps to the
    last few tokens, and whether it finds the opening bracket a closing one needs, each beside an
    untrained model of the same shape.

    Example: `charlm inspect-attention runs/tr`
    """
    pinned = use(threads)
    report = not stdout_taken(json_out, csv_out)
    from ...api import load
    from ...lab.attention import check_options, check_transformer
    from ...lab.attention import study as measure

    check_options(chars)
    lm = load(checkpoint, device=device)
    check_transformer(lm.model)
    study = measure(lm, file=text_file, chars=chars, threads=pinned)
    write_study(study, json_out, csv_out)
    if not report:
        return
    console = get_console()
    console.print(attention_report(study, verbose=not cli_state["quiet"]))
    say_written(console, json=json_out, csv=csv_out)


def attention_headline(study) -> str:
    reach = f"window {study.window}" + (f" + memory {study.memory}" if study.memory else "")
    head = f"{len(study.heads)} heads, {reach}, on {study.chars:,} chars"
    best = study.best_partner()
    if best is None:
        return f"{head}; no bracket pair within reach in this text"
    return (f"{head}; at the {study.pairs:,} closing brackets within reach, head L{best.layer}.H{best.head} puts "
            f"{best.partner:.0%} of its attention on the opening partner (untrained {best.control_partner:.0%}, "
            f"an even look {study.partner_uniform:.0%})")


def heads_table(study) -> Table:
    table = Table(title="every head (untrained in brackets)", header_style="bold", box=box.SIMPLE_HEAD,
                  title_justify="left", caption_justify="left")
    for col in ("head", "mean distance", "last 8 tokens", "on the partner"):
        table.add_column(col, justify="right")
    for r in study.heads:
        partner = "" if r.partner is None else f"{r.partner:.1%} ({r.control_partner:.1%})"
        table.add_row(f"L{r.layer}.H{r.head}", f"{r.mean_distance:.1f} ({r.control_mean_distance:.1f})",
                      f"{r.near:.0%} ({r.control_near:.0%})", partner)
    table.caption = ("mean distance: how far back the attention goes, in tokens (0: the token itself); last 8 "
                     "tokens: the share of attention there; on the partner: at the token before each closing "
                     "bracket, the share on its opening bracket"
                     + ("" if study.partner_uniform is None else
                        f" (an even look over the visible tokens: {study.partner_uniform:.1%})"))
    return table


def attention_report(study, verbose: bool = True) -> Group:
    parts: list[Any] = [Text(attention_headline(study), style="bold")]
    if verbose:
        note = f"inputs: {study.inputs}" + (f", cut to its first {study.chars:,} characters" if study.cut else "")
        note += (f"; read in chunks of {study.window}, memory carried, as evaluation reads; the weights are "
                 f"recomputed from each block (largest difference from the fused attention {study.fidelity:.1e})")
        parts.append(Text(note, style="dim"))
    parts.append(heads_table(study))
    return Group(*parts)
