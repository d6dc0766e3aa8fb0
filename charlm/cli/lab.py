"""`charlm inspect-gradients` and `charlm truncation-table`: how far back the gradient reaches."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from .app import (CONTEXT, json_option, threads_option, _console, _state, app, handles_errors, stdout_taken,
                  write_document)


@app.command("inspect-gradients", context_settings=CONTEXT)
@handles_errors
def inspect_gradients(
    checkpoint: Annotated[Optional[str], typer.Argument(
        help="Checkpoint file or run directory; omit to compare fresh models of each kind in --models.",
        show_default=False)] = None,
    corpus: Annotated[Optional[str], typer.Option(
        help="Text to take windows from (default: a checkpoint's own corpus; random tokens for fresh models).")] = None,
    models: Annotated[str, typer.Option(help="Fresh models to compare, comma-separated.")] = "rnn,lstm,gru",
    hidden_size: Annotated[int, typer.Option(help="Units per layer of the fresh models.")] = 384,
    layers: Annotated[int, typer.Option(help="Layers of the fresh models.")] = 1,
    embedding_size: Annotated[int, typer.Option(help="Embedding width of the fresh models.")] = 64,
    lags: Annotated[int, typer.Option(help="Steps to backpropagate through (the largest lag).")] = 100,
    samples: Annotated[int, typer.Option(help="Windows to aggregate over (geometric mean).")] = 32,
    warmup: Annotated[int, typer.Option(help="Tokens run before each window to give a realistic state.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed for weights and windows.")] = 0,
    json_out: Annotated[Optional[str], json_option("every number")] = None,
    csv_out: Annotated[Optional[str], typer.Option(
        "--csv", metavar="FILE", help="Write one row per lag as CSV to FILE ('-': stdout, and nothing else there).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw the curves to FILE.png or FILE.svg (needs matplotlib).")] = None,
    threads: Annotated[str, threads_option()] = "auto",
) -> None:
    """Measure ||dL/dh|| against lag: why a tanh RNN forgets and an LSTM remembers longer.

    The loss is at the last position of each window; the module runs one step at a time.

    Example: `charlm inspect-gradients --models rnn,lstm,gru --lags 200`

    Example: `charlm inspect-gradients runs/NAME --lags 200 --plot grads.png`
    """
    from ..config import check_seed
    from ..gradients import inspect_gradients as measure

    from ..threads import use

    report = not stdout_taken(json_out, csv_out)   # the tables, unless a document takes stdout
    check_seed(seed)
    use(threads)
    study = measure(checkpoint=checkpoint, corpus=corpus, models=models.split(","),
                    hidden_size=hidden_size, layers=layers, embedding_size=embedding_size, lags=lags,
                    samples=samples, seed=seed, warmup=warmup)
    if plot is not None:
        from ..gradients import plot_study

        plot_study(study, plot)
    if json_out is not None:
        write_document(study.to_json(), json_out)
    if csv_out is not None:
        write_document(_csv_text(study.csv_rows()), csv_out, "--csv")
    if not report:
        return
    from .display import gradient_lag_table, gradient_summary_table, log_chart

    console = _console()
    if not _state["quiet"]:
        first = study.models[0]
        what = (f"checkpoint {checkpoint} ({first.cell} {first.layers}x{first.hidden_size}, trained "
                f"with k={first.chunk_length})" if checkpoint else
                f"fresh models {', '.join(m.name for m in study.models)} "
                f"({layers}x{hidden_size}, seed {seed})")
        console.print(f"[bold]gradient through time[/] of {what}\ninputs: {study.inputs}; loss at the "
                      f"last of {lags + 1} steps, {samples} windows, after {warmup} warm-up tokens",
                      highlight=False)
    console.print(gradient_lag_table(study))
    console.print(gradient_summary_table(study))
    if not _state["quiet"]:
        console.print(log_chart(study))
    for label, path in (("json", json_out), ("csv", csv_out), ("plot", plot)):
        if path is not None and not _state["quiet"]:
            console.print(f"wrote {label} {path}", highlight=False)


def _csv_text(rows) -> str:
    """Rows as CSV text, floats to 6 significant digits."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    for row in rows:
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
    return buf.getvalue()


def _int_list(option: str, value: str) -> list[int]:
    from ..errors import ConfigError

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
    seed: Annotated[int, typer.Option(help="Seed for corpora and weights.")] = 0,
    workdir: Annotated[Optional[Path], typer.Option(help="Keep the corpora and run directories here.")] = None,
    json_out: Annotated[Optional[str], json_option("every cell")] = None,
) -> None:
    """Echo accuracy of tiny models trained with BPTT(k), for every model x distance D x chunk k.

    With k <= D no gradient links the key to its echo. The default grid: ~5 CPU minutes.

    Example: `charlm truncation-table --models lstm --distances 10 --chunks 8,16`.
    """
    from .display import truncation_table as render
    from ..synthetic import truncation_grid

    report = not stdout_taken(json_out)
    console = _console(stderr=not report)   # progress lines on stderr when stdout is the JSON's

    def progress(c, done: int, total: int) -> None:
        if not _state["quiet"]:
            console.print(f"[{done}/{total}] {c.cell} D={c.distance} k={c.chunk}: echo accuracy "
                          f"{c.accuracy:.1%}, echo loss {c.echo_loss:.3f} nats ({c.seconds:.0f}s)",
                          highlight=False)

    result = truncation_grid(models=[m.strip() for m in models.split(",") if m.strip()],
                             distances=_int_list("--distances", distances),
                             chunks=_int_list("--chunks", chunks), hidden_size=hidden_size,
                             batch_size=batch_size, steps=steps, keys=keys, seed=seed, lr=lr,
                             workdir=workdir, on_cell=progress)
    if json_out is not None:
        write_document(result.to_json(), json_out)
    if report:
        console.print(render(result))
