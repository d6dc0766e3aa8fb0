"""`charlm inspect-context`: how much of the past a trained model uses (charlm.context)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from .app import CONTEXT, _console, _state, app, handles_errors, threads_option


def _write(path: str, text: str) -> None:
    """Write text to path, or to stdout for '-'."""
    if path == "-":
        typer.echo(text, nl=False)
        return
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        from ..errors import CharLMError

        raise CharLMError(f"cannot write {path}: {e.strerror or e}") from None


@app.command("inspect-context", context_settings=CONTEXT)
@handles_errors
def inspect_context(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory (its best.pt).")],
    text_file: Annotated[Optional[str], typer.Argument(
        help="UTF-8 text to read (default: the validation tail of the checkpoint's corpus).",
        show_default=False)] = None,
    tail: Annotated[Optional[float], typer.Option(
        help="Read only this last fraction of FILE's characters (default: all of FILE; the "
             "checkpoint's --val-fraction for its own corpus).")] = None,
    targets: Annotated[int, typer.Option(help="Target positions scored, evenly spread.")] = 96,
    max_context: Annotated[int, typer.Option(help="Longest context n (the grid is 1, 2, 4, ... up to it).")] = 2048,
    tolerance: Annotated[float, typer.Option(
        help="Effective context: the first n whose loss is within this fraction of the full-history loss.")] = 0.01,
    shuffle_max: Annotated[int, typer.Option(help="How far back the shuffle curve shuffles, at most --max-context (0: skip it).")] = 256,
    grad_lags: Annotated[int, typer.Option(help="Lags for the gradient horizon (0: skip it).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed for the shuffles and the gradient windows.")] = 0,
    threads: Annotated[str, threads_option()] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write every number to this JSON file ('-': stdout).")] = None,
    csv_out: Annotated[Optional[str], typer.Option("--csv", help="Write one row per curve point to this CSV file ('-': stdout).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw the curves to FILE.png or FILE.svg (needs matplotlib).")] = None,
) -> None:
    """How many tokens of the past the model uses: loss given only the last n tokens, and when the
    past beyond d is replaced or shuffled, beside its chunk length k and gradient horizon.

    Example: `charlm inspect-context runs/NAME`

    Example: `charlm inspect-context runs/NAME other.txt --json context.json --plot context.png`
    """
    from ..errors import ConfigError
    from ..threads import use

    pinned = use(threads)
    if json_out == "-" and csv_out == "-":
        raise ConfigError("--json - and --csv - cannot both write to stdout")
    from ..api import load

    lm = load(checkpoint, device=device)
    study = lm.inspect_context(file=text_file, tail=tail, targets=targets, max_context=max_context,
                               tolerance=tolerance, shuffle_max=shuffle_max, seed=seed,
                               grad_lags=grad_lags, threads=pinned)
    if plot is not None:
        from ..context import plot_context

        plot_context(study, plot)
    if json_out is not None:
        _write(json_out, study.json_text())
    if csv_out is not None:
        _write(csv_out, study.csv_text())
    if "-" in (json_out, csv_out):
        return  # stdout holds the document alone
    from .display import context_report

    console = _console()
    console.print(context_report(study, verbose=not _state["quiet"]))
    for label, path in (("json", json_out), ("csv", csv_out), ("plot", plot)):
        if path is not None and not _state["quiet"]:
            console.print(f"wrote {label} {path}", highlight=False)
