"""`charlm score`: how surprised a model is by each character of a text."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text
from typing_extensions import Annotated

from ..errors import ConfigError
from .app import CONTEXT, app, get_console, handles_errors, json_option, stdout_taken, write_document
from .progress import progress_bar


def _read_text(text: Optional[str], file: Optional[str]) -> str:
    """TEXT, or --file F; '-' for either reads stdin. Exactly one of them."""
    if (text is None) == (file is None):
        raise typer.BadParameter("give the text to score as TEXT or with --file F (one of them; '-' reads stdin)")
    if text is not None and text != "-":
        return text
    if text == "-" or file == "-":
        return sys.stdin.read()
    try:
        return Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--file {file} is not UTF-8 text (bad byte at offset {e.start})") from None
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
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
) -> None:
    """Per-character surprisal in bits, the mean bits per character, and the model's top guesses.

    The text is shown coloured by surprisal; the figures are those of `charlm evaluate`.

    The first token has no prediction; a token spanning several characters shares its bits evenly.

    Examples: `charlm score runs/NAME "To be, or not to be"`, `charlm score runs/NAME --file a.txt --json -`.
    """
    if top < 0:
        raise ConfigError(f"--top must be 0 or more, got {top}")
    content = _read_text(text, file)
    from ..api import load

    lm = load(checkpoint, device=device)
    with progress_bar("score", wanted=not stdout_taken(json_out)) as progress:
        result = lm.score(content, top=top, progress=progress)
    if json_out is not None:
        write_document({**result.to_json(), "checkpoint": str(lm.path)}, json_out)
        if stdout_taken(json_out):
            return
    get_console().print(score_view(result, rows=rows))


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


