"""`charlm score`: how surprised a model is by each character of a text."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from .app import CONTEXT, _console, app, handles_errors, json_option, stdout_taken, threads_option, write_document


def _read_text(text: Optional[str], file: Optional[str]) -> str:
    """TEXT, or --file F; '-' for either reads stdin. Exactly one of them."""
    from ..errors import ConfigError

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
    threads: Annotated[str, threads_option()] = "auto",
) -> None:
    """Per-character surprisal in bits, the mean bits per character, and the model's top guesses.

    The text is shown coloured by surprisal; the figures are those of `charlm evaluate`.

    The first token has no prediction; a token spanning several characters shares its bits evenly.

    Examples: `charlm score runs/NAME "To be, or not to be"`, `charlm score runs/NAME --file a.txt --json -`.
    """
    from ..errors import ConfigError

    if top < 0:
        raise ConfigError(f"--top must be 0 or more, got {top}")
    from ..threads import use

    use(threads)
    content = _read_text(text, file)
    from ..api import load

    lm = load(checkpoint, device=device)
    result = lm.score(content, top=top)
    if json_out is not None:
        write_document({**result.to_json(), "checkpoint": str(lm.path)}, json_out)
        if stdout_taken(json_out):
            return
    from .display import score_view

    _console().print(score_view(result, rows=rows))
