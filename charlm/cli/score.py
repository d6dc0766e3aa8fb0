"""`charlm score`: how surprised a model is by each character of a text."""

from __future__ import annotations

import math
import sys
from typing import Any, Optional

import typer
from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text
from typing_extensions import Annotated

from ..config import MAX_SCORE_CHARS
from ..errors import ConfigError
from ..textio import read_limited
from ..threads import use
from .app import (CONTEXT, app, device_option, get_console, handles_errors, json_option, stdout_taken,
                  threads_option, write_document)
from .progress import progress_bar


def _read_text(text: Optional[str], file: Optional[str]) -> str:
    """TEXT, or --file F; '-' for either reads stdin. Exactly one of them."""
    if (text is None) == (file is None):
        raise typer.BadParameter("give the text to score as TEXT or with --file F (one of them; '-' reads stdin)")
    if text is not None and text != "-":
        return text
    if text == "-" or file == "-":   # read in blocks: `yes | charlm score RUN -` stops at the cap
        return read_limited(sys.stdin.buffer, MAX_SCORE_CHARS, "the text on stdin")
    try:
        with open(file, "rb") as f:
            return read_limited(f, MAX_SCORE_CHARS, f"--file {file}")
    except OSError as e:
        raise ConfigError(f"cannot read --file {file}: {e.strerror or e}") from None


@app.command(context_settings=CONTEXT)
@handles_errors
def score(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory (its best.pt).")],
    text: Annotated[Optional[str], typer.Argument(help="Text to score ('-' reads stdin).", show_default=False)] = None,
    file: Annotated[Optional[str], typer.Option("--file", help="Score this UTF-8 file instead ('-': stdin).")] = None,
    top: Annotated[int, typer.Option(help="Guesses listed at each position (the most likely next tokens).")] = 3,
    rows: Annotated[int, typer.Option(help="Positions listed in the table: the most surprising ones, in "
                                           "text order (0: none; every position is in --json).")] = 20,
    json_out: Annotated[Optional[str], json_option("the charlm.score/1 document (every position)")] = None,
    device: Annotated[str, device_option()] = "cpu",
    threads: Annotated[str, threads_option()] = "auto",
) -> None:
    """Per-character surprisal in bits, the mean bits per character, and the model's top guesses.

    The text is shown coloured by surprisal (without colour, as with NO_COLOR or in a pipe: with a
    line of shades ░▒▓█ under each line of text); the figures are those of `charlm evaluate`.

    The first token has no prediction; a token spanning several characters shares its bits evenly.

    Examples: `charlm score runs/NAME "To be, or not to be"`, `charlm score runs/NAME --file a.txt --json -`.
    """
    if top < 0:
        raise ConfigError(f"--top must be 0 or more, got {top}")
    use(threads)
    content = _read_text(text, file)
    from ..api import load

    lm = load(checkpoint, device=device)
    with progress_bar("score", wanted=not stdout_taken(json_out)) as progress:
        result = lm.score(content, top=top, progress=progress)
    if json_out is not None:
        write_document({**result.to_json(), "checkpoint": str(lm.path)}, json_out)
        if stdout_taken(json_out):
            return
    console = get_console()
    # Without colour (NO_COLOR, a pipe, a file) the colours would carry nothing: shade instead.
    plain = console.no_color or console.color_system is None
    console.print(score_view(result, rows=rows, plain_width=console.width if plain else None))


# score: the text coloured by surprisal, a legend, the totals, and the most surprising positions.
# It takes a charlm.scoring.ScoreResult (duck-typed).

SURPRISAL_STYLES = [(1.0, "green", "<1"), (2.0, "yellow", "1-2"), (4.0, "dark_orange", "2-4"),
                    (8.0, "red", "4-8"), (math.inf, "bold magenta", "8+")]
# The same bands without colour: a line of these under each line of text, one per cell.
SURPRISAL_SHADES = [" ", "░", "▒", "▓", "█"]
NO_PREDICTION = "·"


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


def _shade(bits: Optional[float]) -> str:
    if bits is None:
        return NO_PREDICTION
    return next(shade for (limit, _, _), shade in zip(SURPRISAL_STYLES, SURPRISAL_SHADES) if bits < limit)


def _cell_char(ch: str) -> str:
    """A character as one line of the plain view shows it (no tab or control character there)."""
    return "→" if ch == "\t" else ch if ch.isprintable() else "?"


def shaded_lines(text: str, bits, width: int) -> list[str]:
    """The plain view: each line of text (cut to width cells) with a line of shades under it, a
    shade per cell, so surprisal shows without colour."""
    out: list[str] = []
    row, shades, used = [], [], 0

    def flush() -> None:
        nonlocal row, shades, used
        out.extend(["".join(row).rstrip(), "".join(shades).rstrip()])
        row, shades, used = [], [], 0

    for ch, b in zip(text, bits):
        if ch == "\n":
            flush()
            continue
        shown = _cell_char(ch)
        cells = max(cell_len(shown), 1)
        if used + cells > width:
            flush()
        row.append(shown)
        shades.append(_shade(b) * cells)
        used += cells
    if row or not out:
        flush()
    return out


def score_view(result, rows: int = 20, plain_width: Optional[int] = None) -> Group:
    """The `charlm score` report: the text coloured by surprisal on a colour terminal; with
    ``plain_width`` (no colour) the text with a line of shades under each line instead."""
    if plain_width is None:
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
    else:
        text = Text("\n".join(shaded_lines(result.text, result.bits, max(plain_width, 10))), no_wrap=True)
        legend = Text("bits (the line under the text): ", style="bold")
        for (_, _, label), shade in zip(SURPRISAL_STYLES, SURPRISAL_SHADES):
            legend.append(f"'{shade}' {label}  ")
        legend.append(f"'{NO_PREDICTION}' no prediction (the first token)")
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


