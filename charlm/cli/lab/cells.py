"""`charlm inspect-cells` (what the cells of a recurrent run hold) and `charlm ngram` (the
Kneser-Ney baseline), and their reports.

The measurements are charlm.lab.cells and charlm.lab.ngram; the renderers below take their
studies (duck-typed, so this module never imports torch)."""

from __future__ import annotations

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


def _html_path(path: Optional[Path]) -> None:
    """--html's folder must exist and the name must be a file's, checked before any work."""
    if path is None:
        return
    if path.suffix.lower() not in (".html", ".htm"):
        raise typer.BadParameter(f"--html takes a .html file name, got {path}")
    if not path.parent.is_dir():
        raise typer.BadParameter(f"--html: the folder {path.parent} does not exist")
    if path.is_dir():
        raise typer.BadParameter(f"--html: {path} is a folder")


@app.command("inspect-cells", context_settings=CONTEXT)
@handles_errors
def inspect_cells(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory (its best.pt).")],
    text_file: Annotated[Optional[str], text_file_argument()] = None,
    chars: Annotated[Optional[int], typer.Option(
        help="Read the first this many characters of the text (default 20,000, fewer for a model of more "
             "than 1,500 units; at most 200,000, and 30 M divided by the units).", show_default=False)] = None,
    feature: Annotated[Optional[list[str]], typer.Option(
        metavar="NAME=REGEX", help="A feature of your own: 1 inside a match of REGEX, else 0 (repeatable, up to 16).",
        show_default=False)] = None,
    top: Annotated[int, typer.Option(help="Cells listed per feature, most correlated first.")] = 3,
    order: Annotated[int, typer.Option(help="Highest n-gram order of the baseline, 1-20 (0: no n-gram).")] = 10,
    train: Annotated[Optional[str], typer.Option(
        help="Train the n-gram on this text (default: the checkpoint's training split).", show_default=False)] = None,
    max_train_tokens: Annotated[int, typer.Option(
        help="Count at most this many training tokens for the n-gram (its last ones; bounds its memory).")] = 8_000_000,
    html: Annotated[Optional[Path], typer.Option(
        help="Write a self-contained page: the text coloured by a cell, the surprise, the bits saved.",
        show_default=False)] = None,
    cell: Annotated[Optional[list[int]], typer.Option(
        help="A cell (unit index, as L0:5 is 5 and L1:5 is H + 5) to colour on the page (repeatable).",
        show_default=False)] = None,
    html_chars: Annotated[int, typer.Option(help="Characters shown on the page (at most 20,000).")] = 5000,
    threads: Annotated[str, threads_option()] = "auto",
    device: Annotated[str, device_option()] = "cpu",
    json_out: Annotated[Optional[str], json_option("every number")] = None,
    csv_out: Annotated[Optional[str], csv_option("the figures, one long table,")] = None,
    plot: Annotated[Optional[Path], typer.Option(
        help="Draw the gate scatter, bits saved by distance and by class to this .png or .svg file (needs matplotlib).")] = None,
) -> None:
    """What the cells of a recurrent run hold: gate saturation, cells that track line position,
    strings, brackets and indentation, and where the model beats a Kneser-Ney n-gram, each beside
    an untrained model of the same shape.

    Example: `charlm inspect-cells runs/NAME`

    Example: `charlm inspect-cells runs/NAME --feature digits='[0-9]+' --html cells.html --plot cells.png`
    """
    if plot is not None:
        check_plot_path(plot, "charlm inspect-cells --plot")
    _html_path(html)
    pinned = use(threads)
    report = not stdout_taken(json_out, csv_out)
    from ...api import load
    from ...lab.cells import check_options, parse_features, plot_cells
    from ...lab.cells import study as measure
    from ...lab.cells import write_html
    from ...lab.ngram import check_tokens

    check_options(chars=chars, top=top, order=order, html_chars=html_chars)
    parse_features(feature or [])
    check_tokens(max_train_tokens)
    lm = load(checkpoint, device=device)
    from ...lab.cells import check_recurrent

    check_recurrent(lm.model)
    study = measure(lm, file=text_file, features=feature or [], chars=chars, top=top, order=order,
                    train=train, max_train_tokens=max_train_tokens, threads=pinned)
    if html is not None:
        write_html(study, html, cell or [], html_chars)
    if plot is not None:
        plot_cells(study, plot)
    write_study(study, json_out, csv_out)
    if not report:
        return
    console = get_console()
    console.print(cells_report(study, verbose=not cli_state["quiet"]))
    say_written(console, json=json_out, csv=csv_out, plot=plot, html=html)


def cells_headline(study) -> str:
    m = study.model
    parts = [f"{m['cell']} {m['layers']}x{m['hidden_size']}: {study.model_bits_per_char:.3f} bits/char on "
             f"{study.chars:,} chars (untrained {study.control_bits_per_char:.2f})"]
    if study.ngram:
        n = study.ngram
        parts.append(f"best n-gram (order {n['best_order']} of 1-{n['order']}) {n['bits_per_char']:.3f}")
    return "; ".join(parts)


def gates_table(study) -> Any:
    if not study.gates:
        return Text(f"gates: a {study.model['cell']} has no gates (h = tanh(W x + U h + b)): nothing to saturate",
                    style="dim")
    table = Table(title="gate saturation: mean fraction of characters per unit (untrained in brackets)",
                  header_style="bold", box=box.SIMPLE_HEAD, title_justify="left", caption_justify="left")
    for col in ("layer", "gate", "left < 0.1", "right > 0.9", "units mostly left", "mostly right", "never"):
        table.add_column(col, justify="right")
    for g in study.gates:
        table.add_row(str(g["layer"]), g["gate"], f"{g['left']:.2f} ({g['control_left']:.2f})",
                      f"{g['right']:.2f} ({g['control_right']:.2f})",
                      f"{g['mostly_left']} ({g['control_mostly_left']})",
                      f"{g['mostly_right']} ({g['control_mostly_right']})",
                      f"{g['never_saturated']} ({g['control_never_saturated']})")
    table.caption = ("mostly: saturated at more than half of the characters; never: saturated at under 10% of them;"
                     f" of {study.gates[0]['units']} units per gate")
    return table


def features_table(study) -> Table:
    state = study.model.get("state", "h")
    table = Table(title=f"long-range cells: units ({state}) most correlated with each feature, and a linear probe "
                        "on the whole state", header_style="bold", box=box.SIMPLE_HEAD, title_justify="left",
                  caption_justify="left")
    for col, just in (("feature", "left"), ("best cell", "left"), ("r", "right"), ("untrained r", "right"),
                      ("probe", "right"), ("untrained", "right"), ("chance", "right")):
        table.add_column(col, justify=just)
    for f in study.features:
        if f["constant"]:
            table.add_row(f["feature"], "[dim]constant in this text[/]", "", "", "", "", "")
            continue
        best = f["cells"][0]
        p, cp = f["probe"], f["control_probe"]
        unit = "R² " if p["measure"] == "R2" else "acc "
        table.add_row(f["feature"], best["cell"], f"{best['r']:+.2f}", f"{f['control_best']['r']:+.2f}",
                      f"{unit}{p['score']:.3f}", f"{cp['score']:.3f}", f"{p['chance']:.3f}")
    table.caption = ("r: Pearson correlation over the text (the next --top cells are in --json); probe: ridge on "
                     "every layer's state, fit on the first half of the text, scored on the second (R² for a "
                     "value, accuracy for a 0/1 feature; chance: 0, or the majority guess)")
    return table


def saved_tables(study) -> list[Any]:
    if not study.ngram:
        return []
    order = study.ngram["best_order"]
    by_class = Table(title=f"where the model wins: bits saved per character over the {order}-gram, by class",
                     header_style="bold", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("class", "chars", "model bits", "n-gram bits", "saved", "total saved"):
        by_class.add_column(col, justify="right")
    for c in study.by_class:
        by_class.add_row(c["class"], f"{c['chars']:,}", f"{c['model_bits']:.3f}", f"{c['ngram_bits']:.3f}",
                         f"{c['saved']:+.3f}", f"{c['total_saved']:+,.0f}")
    by_dist = Table(title="closing brackets and quotes, by distance to the opening partner",
                    header_style="bold", box=box.SIMPLE_HEAD, title_justify="left", caption_justify="left")
    for col in ("closing", "distance", "count", "model bits", "n-gram bits", "saved"):
        by_dist.add_column(col, justify="right")
    for d in study.by_distance:
        by_dist.add_row(d["kind"], f"{d['from']}-{d['to']}", str(d["count"]), f"{d['model_bits']:.3f}",
                        f"{d['ngram_bits']:.3f}", f"{d['saved']:+.3f}")
    by_dist.caption = f"the {order}-gram sees the {order - 1} characters before each one"
    return [by_class, by_dist] if study.by_distance else [by_class]


def cells_report(study, verbose: bool = True) -> Group:
    parts: list[Any] = [Text(cells_headline(study), style="bold")]
    if verbose:
        note = f"inputs: {study.inputs}" + (f", cut to its first {study.chars:,} characters" if study.cut else "")
        note += f"; untrained control: same config, seed {study.model['control_seed']}"
        if study.ngram:
            note += f"; n-gram trained on {study.ngram['train']} ({study.ngram['train_tokens']:,} tokens)"
        parts.append(Text(note, style="dim"))
    parts += [gates_table(study), features_table(study), *saved_tables(study)]
    return Group(*parts)


@app.command("ngram", context_settings=CONTEXT)
@handles_errors
def ngram(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory: its tokenizer and corpus split.")],
    text_file: Annotated[Optional[str], text_file_argument("score")] = None,
    order: Annotated[int, typer.Option(help="Highest order, 1-20: every order up to it is scored.")] = 10,
    train: Annotated[Optional[str], typer.Option(
        help="Train on this text (default: the checkpoint's training split).", show_default=False)] = None,
    max_train_tokens: Annotated[int, typer.Option(
        help="Count at most this many training tokens (its last ones; bounds the memory).")] = 8_000_000,
    json_out: Annotated[Optional[str], json_option("every number")] = None,
    csv_out: Annotated[Optional[str], csv_option("one row per order")] = None,
) -> None:
    """An interpolated Kneser-Ney n-gram baseline with the run's tokenizer and training split,
    in the run's bits per character.

    Example: `charlm ngram runs/NAME --order 20`
    """
    report = not stdout_taken(json_out, csv_out)
    from ...api import load
    from ...lab.ngram import check_order, check_tokens
    from ...lab.ngram import study as measure

    check_order(order)
    check_tokens(max_train_tokens)
    study = measure(load(checkpoint, device="cpu"), file=text_file, train=train, order=order,
                    max_tokens=max_train_tokens)
    write_study(study, json_out, csv_out)
    if not report:
        return
    console = get_console()
    table = Table(title=f"Kneser-Ney n-grams: trained on {study.train_inputs} ({study.train_tokens:,} tokens), "
                        f"scored on {study.eval_inputs}", header_style="bold", box=box.SIMPLE_HEAD,
                  title_justify="left", caption_justify="left")
    for col in ("order", "bits/char", "discount", "n-grams kept", "pruned"):
        table.add_column(col, justify="right")
    for o in study.orders:
        mark = " ◀" if o["order"] == study.best_order else ""
        table.add_row(f"{o['order']}{mark}", f"{o['bits_per_char']:.4f}", f"{o['discount']:.3f}",
                      f"{o['ngrams_kept']:,}", f"{o['ngrams_pruned']:,}")
    table.caption = (f"◀ the best order; n-grams seen once are pruned above order 4 (their mass goes to the back-off); "
                     f"tables {study.table_bytes / 2**20:.1f} MiB; train {study.seconds['train']:.1f}s, "
                     f"score {study.seconds['score']:.1f}s")
    console.print(table)
    say_written(console, json=json_out, csv=csv_out)
