"""`charlm inspect-context`: how much of the past a trained model uses, and its report.

The measurement is charlm.lab.context; the renderers below take its ContextStudy (duck-typed,
so this module never imports torch)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text
from typing_extensions import Annotated

from ...plotting import check_plot_path
from ...threads import use
from ..app import (CONTEXT, app, cli_state, csv_option, device_option, get_console, handles_errors,
                   json_option, say_written, stdout_taken, text_file_argument, threads_option, write_study)


@app.command("inspect-context", context_settings=CONTEXT)
@handles_errors
def inspect_context(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory (its best.pt).")],
    text_file: Annotated[Optional[str], text_file_argument()] = None,
    tail: Annotated[Optional[float], typer.Option(
        help="Read only this last fraction of the text's characters (default: all of it; the "
             "checkpoint's --val-fraction for its own corpus).")] = None,
    targets: Annotated[int, typer.Option(help="Target positions scored, evenly spread.")] = 96,
    max_context: Annotated[int, typer.Option(help="Longest context n (the grid is 1, 2, 4, ... up to it).")] = 2048,
    tolerance: Annotated[float, typer.Option(
        help="Effective context: the first n whose loss is within this fraction of the full-history loss.")] = 0.01,
    shuffle_max: Annotated[int, typer.Option(help="How far back the shuffle curve shuffles, at most --max-context (0: skip it).")] = 256,
    grad_lags: Annotated[int, typer.Option(help="Lags for the gradient horizon (0: skip it).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed for the shuffles and the gradient windows.")] = 0,
    threads: Annotated[str, threads_option()] = "auto",
    device: Annotated[str, device_option()] = "auto",
    json_out: Annotated[Optional[str], json_option("every number")] = None,
    csv_out: Annotated[Optional[str], csv_option("one row per curve point")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw the curves to this .png or .svg file (needs matplotlib).")] = None,
) -> None:
    """How many tokens of the past the model uses: loss given only the last n tokens, and when the
    past beyond d is replaced or shuffled, beside its chunk length k and gradient horizon.

    Example: `charlm inspect-context runs/NAME`

    Example: `charlm inspect-context runs/NAME other.txt --json context.json --plot context.png`
    """
    if plot is not None:
        check_plot_path(plot, "charlm inspect-context --plot")
    pinned = use(threads)
    report = not stdout_taken(json_out, csv_out)   # the report, unless a document takes stdout
    from ...api import load
    from ...lab.context import plot_context
    from ...lab.context import study as measure

    study = measure(load(checkpoint, device=device), file=text_file, tail=tail, targets=targets,
                    max_context=max_context, tolerance=tolerance, shuffle_max=shuffle_max, seed=seed,
                    grad_lags=grad_lags, threads=pinned)
    if plot is not None:
        plot_context(study, plot)
    write_study(study, json_out, csv_out)
    if not report:
        return
    console = get_console()
    console.print(context_report(study, verbose=not cli_state["quiet"]))
    say_written(console, json=json_out, csv=csv_out, plot=plot)


# ---------------------------------------------------------------------------------------------
# The report: a headline, the figures, the curves by n, and a bar chart of the excess loss.

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
    if m.get("reach"):
        uses += f" of the {m['reach']} it can see (window + memory)"
    return ", ".join(parts + [uses])


def context_summary_table(study) -> Table:
    table = Table(show_header=False, box=box.SIMPLE_HEAD, title="summary", title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right")
    table.add_column(style="dim")
    m = study.model
    tol = f"{study.tolerance:.1%} of it"
    rows = [("full-history loss", f"{study.full_loss:.4f}", f"nats/token, accuracy {study.full_accuracy:.1%}"),
            ("effective context", _tokens(study.effective_context, study.max_context),
             f"first n with loss within {tol}" + (f"; a transformer sees at most {m['reach']} tokens "
                                                 f"(window + memory), so never more" if m.get("reach") else "")),
            ("replace horizon", _tokens(study.replace_horizon, study.max_context),
             "first d: the past beyond it replaced, loss within tolerance")]
    if study.shuffle:
        rows.append(("shuffle horizon", _tokens(study.shuffle_horizon, study.shuffle_max),
                     "first d: the past beyond it shuffled, loss within tolerance"))
    if m.get("chunk_length"):
        rows.append(("training chunk k", str(m["chunk_length"]), "BPTT(k): no gradient reached further"
                     if not m.get("reach") else "the attention window: no gradient reached further"))
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
