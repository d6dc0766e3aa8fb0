"""`charlm export`: the model's step function as an ONNX or TorchScript file, vocabulary beside it."""

from __future__ import annotations

from pathlib import Path

import typer
from typing_extensions import Annotated

from ..errors import ConfigError
from ..util import human_bytes
from .app import CONTEXT, app, cli_state, get_console, handles_errors


@app.command("export", context_settings=CONTEXT)
@handles_errors
def export_command(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory (its best.pt).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (its vocabulary goes beside it, to <path>.vocab.json).")],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript.")] = "onnx",
    force: Annotated[bool, typer.Option(metavar="", help="Replace the output file (and its .vocab.json) when they exist.")] = False,
) -> None:
    """Write a step function (ids (B, T), state) -> (logits (B, T, V), state) that runs without charlm.

    Inputs: ids, h0 (and c0 for an LSTM); outputs: logits, hn (and cn). Batch and length are free
    (but for minGRU/minLSTM in ONNX, which take one token per call).

    Feed hn back as h0 to continue a text; a zero state starts one. ONNX needs the `export` extra.

    Example: `charlm export runs/NAME --format onnx -o model.onnx`.
    """
    from ..export import FORMATS

    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    from ..api import load

    lm = load(checkpoint, device="cpu")
    path, vocab = lm.export(output, format=format, force=force)
    if not cli_state["quiet"]:
        c = lm.config
        get_console().print(f"exported {lm.path} ({c.cell}, {c.layers}x{c.hidden_size}, vocabulary "
                         f"{c.vocab_size}) to {path} ({human_bytes(path.stat().st_size)}) and {vocab}",
                         soft_wrap=True, markup=False)
