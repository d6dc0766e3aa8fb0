"""`charlm sample` and `charlm evaluate`: use a trained model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from .app import CONTEXT, _console, app, handles_errors


@app.command(context_settings=CONTEXT)
@handles_errors
def sample(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory (its best.pt).")],
    prime: Annotated[str, typer.Option(help="Text to start from.")] = "",
    prime_file: Annotated[Optional[Path], typer.Option(help="Read the prime from this UTF-8 file.")] = None,
    length: Annotated[int, typer.Option(help="Tokens to generate.")] = 500,
    temperature: Annotated[float, typer.Option(help="Softmax temperature (> 0).")] = 0.8,
    top_k: Annotated[Optional[int], typer.Option(help="Sample among the k most likely tokens.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass in (0, 1].")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed: the same seed gives the same text.")] = None,
    num_samples: Annotated[int, typer.Option(help="Samples, generated together as one batch.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "cpu",
) -> None:
    """Stream generated text to stdout, one character at a time.

    Example: `charlm sample runs/NAME --prime 'ROMEO:' --length 300 --temperature 0.7 --seed 1`.
    """
    from ..config import SampleConfig
    from ..errors import ConfigError

    if prime_file is not None:
        try:
            prime = prime_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"--prime-file {prime_file} is not UTF-8 text (bad byte at offset {e.start})") from None
        except OSError as e:
            raise ConfigError(f"cannot read --prime-file {prime_file}: {e.strerror or e}") from None
    SampleConfig(prime=prime, length=length, temperature=temperature, top_k=top_k, top_p=top_p,
                 seed=seed, num_samples=num_samples).validate()
    from ..api import load

    lm = load(checkpoint, device=device)
    stream = lm.stream(prime=prime, length=length, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed, num_samples=num_samples)
    out = sys.stdout
    if num_samples == 1:
        out.write(prime)
        for pieces in stream:
            out.write(pieces[0])
            out.flush()
        out.write("\n")
        return
    texts = [[] for _ in range(num_samples)]
    for pieces in stream:
        for i, p in enumerate(pieces):
            texts[i].append(p)
    for i, t in enumerate(texts):
        out.write(f"--- sample {i + 1} ---\n{prime}{''.join(t)}\n")



@app.command(context_settings=CONTEXT)
@handles_errors
def evaluate(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory (its best.pt).")],
    text_file: Annotated[str, typer.Argument(help="UTF-8 text file (or folder) to evaluate on.")],
    tail: Annotated[Optional[float], typer.Option(
        help="Evaluate only this last fraction of the file's characters (0.1: the usual validation split).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Loss (nats/token), bits per character and perplexity over a whole file, evaluated statefully.

    Example: `charlm evaluate runs/NAME input.txt --tail 0.1`.
    """
    from ..errors import ConfigError

    if tail is not None and not 0 < tail <= 1:
        raise ConfigError(f"--tail must be in (0, 1], got {tail}")
    from ..api import load

    lm = load(checkpoint, device=device)
    result = lm.evaluate_file(text_file, tail=tail)
    record = {"checkpoint": str(lm.path), "file": text_file, "tail": tail, **result.as_dict()}
    if as_json:
        typer.echo(json.dumps(record))
        return
    from .display import metrics_table

    table = metrics_table(f"evaluate {text_file}" + (f" (last {tail:g})" if tail else ""),
                          ["figure", "value"],
                          [["loss (nats/token)", f"{result.loss:.4f}"],
                           ["bits per character", f"{result.bits_per_char:.4f}"],
                           ["perplexity (per token)", f"{result.perplexity:.3f}"],
                           ["tokens", f"{result.tokens:,}"],
                           ["characters", f"{result.chars:,.0f}"]])
    _console().print(table)
