"""The `charlm` command line: parse options, build configs, call the core, render.

Only this module and display.py import typer or rich. Every command catches CharLMError and prints
its message as one red line on stderr (exit 1; 130 after Ctrl-C). torch is imported inside the
commands that need it, so `charlm --help` starts fast.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from typing_extensions import Annotated

from . import __version__
from .config import ModelConfig, TrainConfig
from .errors import CharLMError

_M, _T = ModelConfig(), TrainConfig()  # defaults shown in --help come from the dataclasses
CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    name="charlm", context_settings=CONTEXT, no_args_is_help=True, rich_markup_mode="rich",
    help="Character-level recurrent language models: train, sample, evaluate, and measure how far "
         "back the gradient reaches.\n\nExamples:\n\n  charlm train                      # built-in corpus, 3 minutes\n\n"
         "  charlm train input.txt --max-time 600\n\n  charlm sample runs/NAME --prime 'ROMEO:'\n\n"
         "  charlm inspect-gradients --models rnn,lstm,gru")

_state: dict[str, Any] = {"quiet": False}


def _console(stderr: bool = False) -> Console:
    no_color = bool(os.environ.get("NO_COLOR"))
    return Console(stderr=stderr, no_color=no_color, highlight=False)


def fail(message: str, code: int = 1) -> None:
    """Print one red line on stderr and exit."""
    _console(stderr=True).print(f"[red]error:[/] {message}", soft_wrap=True, markup=True)
    raise typer.Exit(code)


def handles_errors(func: Callable) -> Callable:
    """Turn the core's CharLMError into one line and an exit code; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CharLMError as e:
            from rich.markup import escape

            # Under torchrun every rank raises the same error (rank 0 decides and tells the
            # others): rank 0 says it; the first rank of each other node says it once, tagged.
            rank, local_rank = os.environ.get("RANK", "0"), os.environ.get("LOCAL_RANK", "0")
            if rank != "0" and (local_rank != "0" or type(e).__name__ == "Interrupted"):
                raise typer.Exit(e.exit_code)
            fail(escape(str(e) if rank == "0" else f"rank {rank}: {e}"), e.exit_code)
        except KeyboardInterrupt:
            _console(stderr=True).print("[red]interrupted[/]")
            raise typer.Exit(130)
        except BrokenPipeError:  # `charlm sample ... | head`
            sys.stderr.close()
            raise typer.Exit(0)

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"charlm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.")] = False,
) -> None:
    _state["quiet"] = quiet


# ---------------------------------------------------------------------------------------------
# train

@app.command(context_settings=CONTEXT)
@handles_errors
def train(
    corpus: Annotated[Optional[str], typer.Argument(
        help="UTF-8 text file, folder of text files, or catalog name; omit for the built-in corpus "
             "(Python's standard library source).", show_default=False)] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file of options (flags override it).")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved TOML and exit.")] = False,
    model: Annotated[Optional[str], typer.Option(help=f"Cell: lstm, gru or rnn (tanh). \\[default: {_M.cell}]")] = None,
    hidden_size: Annotated[Optional[int], typer.Option(help=f"Units per layer. \\[default: {_M.hidden_size}]")] = None,
    layers: Annotated[Optional[int], typer.Option(help=f"Recurrent layers. \\[default: {_M.layers}]")] = None,
    embedding_size: Annotated[Optional[int], typer.Option(help=f"Embedding width. \\[default: {_M.embedding_size}]")] = None,
    dropout: Annotated[Optional[float], typer.Option(help=f"Dropout in [0, 1). \\[default: {_M.dropout:g}]")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help=f"BPTT chunk length k. \\[default: {_T.seq_len}]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Parallel streams B (per process). \\[default: {_T.batch_size}]")] = None,
    lr: Annotated[Optional[float], typer.Option(help=f"Peak learning rate. \\[default: {_T.lr:g}]")] = None,
    min_lr_ratio: Annotated[Optional[float], typer.Option(help="Final lr as a fraction of --lr. \\[default: 0.1]")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="Linear warm-up steps. \\[default: 50]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay. \\[default: 0]")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Global gradient-norm clip; 0 disables. \\[default: 1.0]")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Stop after this many epochs (whole run).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (whole run).")] = None,
    max_time: Annotated[Optional[float], typer.Option(
        help="Stop after this many seconds (whole run). With no stopping option: 180.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Tail of the corpus held out. \\[default: 0.1]")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help=f"Evaluate every N steps. \\[default: {_T.eval_every}]")] = None,
    eval_tokens: Annotated[Optional[int], typer.Option(
        help=f"Validation tokens per evaluation during training, evenly spread; 0: all. "
             f"\\[default: {_T.eval_tokens}]")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="char, spm-char, bpe or unigram. \\[default: char]")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="Sentencepiece vocabulary size.")] = None,
    min_char_count: Annotated[Optional[int], typer.Option(help="Rarer characters become <unk>. \\[default: 1]")] = None,
    normalize: Annotated[Optional[str], typer.Option(help="none, nfc or nfd (Hangul -> jamo). \\[default: none]")] = None,
    out: Annotated[Optional[str], typer.Option(help="Run directory. \\[default: a new runs/DATE-TIME]")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume", help="Continue the run in --out.")] = None,
    force: Annotated[Optional[bool], typer.Option("--force", help="Replace an existing run directory.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed. \\[default: 1337]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps. \\[default: auto]")] = None,
    precision: Annotated[Optional[str], typer.Option(
        help="auto, fp32, bf16 (CUDA, or a CPU with native bf16) or fp16 (CUDA). auto is bf16 on such "
             "a CPU, fp32 elsewhere. \\[default: auto]")] = None,
    grad_report_every: Annotated[Optional[int], typer.Option(
        help="Log a gradient-through-time summary every N steps. \\[default: 0, never]")] = None,
    tensorboard: Annotated[Optional[bool], typer.Option("--tensorboard", help="Write TensorBoard event files.")] = None,
    sample_length: Annotated[Optional[int], typer.Option(help="Characters sampled at the end. \\[default: 300]")] = None,
) -> None:
    """Train a language model with truncated BPTT; checkpoints go to the run directory.

    Examples: `charlm train`, `charlm train input.txt --max-time 600 --model gru`,
    `charlm train --out runs/a --resume`.
    """
    from .train import resolve_options
    from .config import to_toml, ModelConfig

    explicit = dict(corpus=corpus, model=model, hidden_size=hidden_size, layers=layers,
                    embedding_size=embedding_size, dropout=dropout, seq_len=seq_len,
                    batch_size=batch_size, lr=lr, min_lr_ratio=min_lr_ratio, warmup_steps=warmup_steps,
                    weight_decay=weight_decay, grad_clip=grad_clip, epochs=epochs, max_steps=max_steps,
                    max_time=max_time, val_fraction=val_fraction, eval_every=eval_every, eval_tokens=eval_tokens,
                    tokenizer=tokenizer, vocab_size=vocab_size, min_char_count=min_char_count,
                    normalize=normalize, out=out, resume=resume, force=force, seed=seed, device=device,
                    precision=precision, grad_report_every=grad_report_every, tensorboard=tensorboard,
                    sample_length=sample_length)
    model_config, train_config = resolve_options(explicit, str(config) if config else None)
    if print_config:
        typer.echo(to_toml(model_config or ModelConfig(), train_config), nl=False)
        return

    from .display import TrainingView
    from .train import train as run_training

    console = _console()
    view = TrainingView(console, quiet=_state["quiet"])
    try:
        run_dir = run_training(train_config, model_config, on_event=view)
    finally:
        view.close()
    if train_config.sample_length and not _state["quiet"]:
        from .api import load

        lm = load(run_dir, device="cpu")
        console.print(f"[bold]sample[/] (temperature 0.8, from {lm.path}/best.pt):", highlight=False)
        for pieces in lm.stream(length=train_config.sample_length, temperature=0.8, seed=train_config.seed):
            sys.stdout.write(pieces[0])
            sys.stdout.flush()
        sys.stdout.write("\n")


# ---------------------------------------------------------------------------------------------
# sample

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
    from .config import SampleConfig
    from .errors import ConfigError

    if prime_file is not None:
        try:
            prime = prime_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"--prime-file {prime_file} is not UTF-8 text (bad byte at offset {e.start})") from None
        except OSError as e:
            raise ConfigError(f"cannot read --prime-file {prime_file}: {e.strerror or e}") from None
    SampleConfig(prime=prime, length=length, temperature=temperature, top_k=top_k, top_p=top_p,
                 seed=seed, num_samples=num_samples).validate()
    from .api import load

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


# ---------------------------------------------------------------------------------------------
# evaluate

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
    from .errors import ConfigError

    if tail is not None and not 0 < tail <= 1:
        raise ConfigError(f"--tail must be in (0, 1], got {tail}")
    from .api import load

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


# ---------------------------------------------------------------------------------------------
# info, runs, plot: look inside checkpoints and run directories

def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


@app.command(context_settings=CONTEXT)
@handles_errors
def info(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory (its best.pt).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What is inside a checkpoint: model, tokenizer, progress, corpus, device, versions.

    Examples: `charlm info runs/NAME`, `charlm info runs/NAME/last.pt --json`.
    """
    from .runinfo import checkpoint_info

    d = checkpoint_info(checkpoint)
    if as_json:
        typer.echo(json.dumps(d))
        return
    from .display import kv_table

    rows = [
        ["checkpoint", d["checkpoint"]],
        ["model", f"{d['model']} {d['layers']}x{d['hidden_size']}, embedding {d['embedding_size']}, "
                  f"dropout {d['dropout']:g}"],
        ["parameters", _fmt(d["parameters"])],
        ["tokenizer", f"{d['tokenizer']}" + (f" (normalize {d['normalize']})" if d["normalize"] != "none" else "")
         + f", vocabulary {d['vocab_size']:,}"],
        ["step", f"{d['step']:,} (epoch {d['epoch']})"],
        ["tokens seen", _fmt(d["tokens_seen"])],
        ["training time", f"{d['elapsed_s']:.0f} s" if d["elapsed_s"] is not None else "-"],
        ["best val loss", _fmt(d["best_val_loss"]) + " nats/token"],
        ["best val bits/char", _fmt(d["best_val_bpc"])],
        ["corpus", f"{d['corpus']} ({_fmt(d['corpus_chars'])} characters)"],
        ["corpus sha256", _fmt(d["corpus_sha256"])],
        ["BPTT", f"{d['batch_size']} streams x {d['seq_len']} tokens"
         + (f" x {d['world_size']} processes" if d["world_size"] > 1 else "")],
        ["trained on", f"{d['device']}, {d['precision']}"],
        ["versions", f"charlm {d['charlm_version']}, torch {d['torch_version']}, python {d['python_version']}"],
    ]
    _console().print(kv_table(f"charlm info {checkpoint}", rows))


@app.command(context_settings=CONTEXT)
@handles_errors
def runs(
    folder: Annotated[Path, typer.Argument(help="Folder of run directories (or one run).")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List run directories with their best validation figures (reads metrics.jsonl, not weights).

    Examples: `charlm runs`, `charlm runs experiments/ --json`.
    """
    from .runinfo import find_runs, run_summary

    summaries = [run_summary(d) for d in find_runs(folder)]
    if as_json:
        typer.echo(json.dumps(summaries))
        return
    if not summaries:
        _console().print(f"no run directories in {folder}")
        return
    from .display import compact_table

    def short(run: str) -> str:  # the run's path below the folder: "lstm" rather than "runs/lstm"
        p = Path(run)
        return str(p.relative_to(folder)) if p != folder and p.is_relative_to(folder) else p.name

    rows = [[short(s["run"]), s["model"] or "-", Path(s["corpus"]).name if s["corpus"] else "-",
             _fmt(s["step"]), _fmt(s["best_val_loss"]), _fmt(s["best_val_bpc"]),
             f"{s['elapsed_s']:.0f}s" if s["elapsed_s"] is not None else "-",
             "done" if s["status"] in ("max_steps", "max_time", "epochs") else s["status"]]
            for s in summaries]
    _console().print(compact_table(f"runs in {folder}", ["run", "model", "corpus", "steps", "val loss",
                                                         "bpc", "time", "status"],
                                   rows, text_columns=3, flexible=2))


@app.command(context_settings=CONTEXT)
@handles_errors
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Image to write (.png, .svg or .pdf).")] = Path("curves.png"),
    title: Annotated[Optional[str], typer.Option(help="Figure title.")] = None,
) -> None:
    """Draw train/val loss and bits/char against steps and wall time (needs the `plot` extra).

    Example: `charlm plot runs/lstm runs/gru -o curves.png`.
    """
    from .plotting import plot_runs

    path = plot_runs(run_dirs, output, title=title)
    typer.echo(str(path))


# ---------------------------------------------------------------------------------------------
# inspect-gradients (issue 3): how far back the gradient reaches, and where it vanishes

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
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every number to this JSON file.")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Write one row per lag to this CSV file.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw the curves to FILE.png or FILE.svg (needs matplotlib).")] = None,
) -> None:
    """Measure ||dL/dh|| against lag: why a tanh RNN forgets and an LSTM remembers longer.

    The loss is at the last position of each window; the module runs one step at a time.

    Example: `charlm inspect-gradients --models rnn,lstm,gru --lags 200`

    Example: `charlm inspect-gradients runs/NAME --lags 200 --plot grads.png`
    """
    from .gradients import inspect_gradients as measure

    study = measure(checkpoint=checkpoint, corpus=corpus, models=models.split(","),
                    hidden_size=hidden_size, layers=layers, embedding_size=embedding_size, lags=lags,
                    samples=samples, seed=seed, warmup=warmup)
    if plot is not None:
        from .gradients import plot_study

        plot_study(study, plot)
    if json_out is not None:
        study.write_json(json_out)
    if csv_out is not None:
        study.write_csv(csv_out)
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


def _int_list(option: str, value: str) -> list[int]:
    from .errors import ConfigError

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
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every cell to this JSON file.")] = None,
) -> None:
    """Echo accuracy of tiny models trained with BPTT(k), for every model x distance D x chunk k.

    With k <= D no gradient links the key to its echo. The default grid: ~5 CPU minutes.

    Example: `charlm truncation-table --models lstm --distances 10 --chunks 8,16`.
    """
    from .display import truncation_table as render
    from .synthetic import truncation_grid

    console = _console()

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
        try:
            json_out.write_text(json.dumps(result.to_json(), indent=1) + "\n")
        except OSError as e:
            from .errors import CharLMError

            raise CharLMError(f"cannot write {json_out}: {e.strerror or e}") from None
    console.print(render(result))


# ---------------------------------------------------------------------------------------------
# corpus: the catalog of named corpora, and what is in a text file.
# (`corpus_app` is shared: other `charlm corpus ...` subcommands are added to it, not to app.)

corpus_app = typer.Typer(
    context_settings=CONTEXT, no_args_is_help=True, rich_markup_mode="rich",
    help="Corpora: the built-in one, named ones downloaded into a cache, and what is in a file.\n\n"
         "Examples:\n\n  charlm corpus list\n\n  charlm corpus get tinyshakespeare\n\n  charlm corpus info input.txt")
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("list", context_settings=CONTEXT)
@handles_errors
def corpus_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The built-in corpus and the named corpora, with source, sha256, licence and cache state.

    Example: `charlm corpus list`.
    """
    from . import catalog
    from .data import BUILTIN_NAME

    rows = catalog.listing()
    if as_json:
        typer.echo(json.dumps([{"name": BUILTIN_NAME, "url": None, "sha256": None, "size": None,
                                "licence": "Python Software Foundation License", "cached": True,
                                "description": "Python's standard library source, offline"}] + rows))
        return
    from rich.markup import escape

    from .display import kv_table

    entries = [[BUILTIN_NAME, "Python's standard library source (about 1.2 MB), offline, always here\n"
                              "licence  Python Software Foundation License"]]
    for r in rows:
        sha = r["sha256"] or "[yellow]unknown (no published sha256 found): refused unless --sha256 or --allow-unverified[/]"
        entries.append([r["name"], f"{escape(r['description'])}\nsource   {escape(r['url'])} "
                                   f"({r['size'] / 1e6:.1f} MB)\nsha256   {sha}\nlicence  {escape(r['licence'])}\n"
                                   f"cached   " + (escape(r["path"]) if r["cached"] else "no")])
    folder = str(catalog.cache_dir())
    home = os.path.expanduser("~")
    if folder.startswith(home + os.sep):  # ~/.cache/charlm reads better than the full path
        folder = "~" + folder[len(home):]
    _console().print(kv_table(f"corpora (cache folder: {escape(folder)})", entries,
                              show_lines=True))
    _console().print("`charlm train NAME` downloads a named corpus on first use; "
                     "`charlm corpus get NAME` fetches it now.", highlight=False)


@corpus_app.command("get", context_settings=CONTEXT)
@handles_errors
def corpus_get(
    name: Annotated[str, typer.Argument(help="Catalog name (see `charlm corpus list`).")],
    sha256: Annotated[Optional[str], typer.Option(help="Expected sha256 of the download, when the catalog has none.")] = None,
    allow_unverified: Annotated[bool, typer.Option(
        "--allow-unverified", help="Accept a download with no known sha256 after a size check.")] = False,
) -> None:
    """Download a named corpus into the cache, verify its sha256, print the text file's path.

    Examples: `charlm corpus get tinyshakespeare`, `charlm corpus get text8 --sha256 HEX`.
    The cache is $CHARLM_CACHE, else $XDG_CACHE_HOME/charlm, else ~/.cache/charlm.
    """
    from . import catalog

    r = catalog.recipe(name)
    console = _console(stderr=True)
    if catalog.is_cached(name):
        typer.echo(str(catalog.cached_path(name)))
        return
    if r.sha256 is None and sha256 is None and allow_unverified:
        console.print(f"[yellow]warning:[/] no published sha256 for {name}: checking its size only",
                      highlight=False)
    show = console.is_terminal and not _state["quiet"]
    if show:
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task(f"get {name}", total=r.size)
            path = catalog.fetch(name, lambda done, total: progress.update(task, completed=done, total=total or r.size),
                                 sha256=sha256, allow_unverified=allow_unverified)
    else:
        path = catalog.fetch(name, sha256=sha256, allow_unverified=allow_unverified)
    typer.echo(str(path))


@corpus_app.command("info", context_settings=CONTEXT)
@handles_errors
def corpus_info(
    file: Annotated[str, typer.Argument(help="UTF-8 text file, folder, or catalog name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    top: Annotated[int, typer.Option(help="How many most and least frequent characters to show.")] = 10,
) -> None:
    """Size, characters, distinct characters, the most and least frequent, and which tokenizer to use.

    Example: `charlm corpus info input.txt`.
    """
    from .catalog import describe_corpus

    d = describe_corpus(file, top=top)
    if as_json:
        typer.echo(json.dumps(d, ensure_ascii=False))
        return
    from rich.markup import escape

    from .display import kv_table

    show = lambda pairs: "  ".join(f"{escape(repr(ch))} {n:,}" for ch, n in pairs)
    rows = [["corpus", escape(d["corpus"]) + (f" ({d['files']} files)" if d["files"] > 1 else "")],
            ["size", f"{d['bytes']:,} bytes"],
            ["characters", f"{d['characters']:,}"],
            ["distinct characters", f"{d['distinct']:,} ({d['covering_99_9']:,} cover 99.9% of the text)"],
            ["most frequent", show(d["most_frequent"])],
            ["least frequent", show(d["least_frequent"])],
            ["sha256", d["sha256"]],
            ["recommended", f"[bold]{d['options']}[/] (vocabulary {d['vocab_size']:,})"],
            ["why", d["reason"]]]
    _console().print(kv_table(f"corpus info {escape(file)}", rows))


@corpus_app.command("make", context_settings=CONTEXT)
@handles_errors
def corpus_make(
    kind: Annotated[str, typer.Argument(help="Which synthetic corpus: echo.")],
    distance: Annotated[int, typer.Option(help="Steps between a key and its echo (D).")] = 20,
    records: Annotated[int, typer.Option(help="Number of records (lines).")] = 5000,
    keys: Annotated[int, typer.Option(help="Distinct key symbols (chance = 1/keys).")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="File to write. \\[default: echo-dD.txt]")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the file if it exists.")] = False,
) -> None:
    """Write a synthetic long-range corpus for the truncation experiment.

    echo: lines of a key, D-1 random letters, a '>' cue and the key again.

    Example: `charlm corpus make echo --distance 40`.
    """
    from .errors import ConfigError
    from .synthetic import write_echo

    if kind != "echo":
        raise ConfigError(f"unknown synthetic corpus {kind!r}: the one there is now is 'echo'")
    path = write_echo(out or Path(f"echo-d{distance}.txt"), distance, records, keys, seed, force)
    if not _state["quiet"]:
        _console().print(f"wrote {path}: {records:,} records, the echo {distance} steps after its key "
                         f"(chance {1 / keys:.1%}); train with e.g. `charlm train {path} --seq-len "
                         f"{2 * distance}`", highlight=False)


def main() -> None:
    # The same test as distributed.launched_by_torchrun, without importing torch for --help.
    if not ("RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1):
        app()
        return
    # Under torchrun, leave without running C++ static destructors. The run is over and saved
    # (the process group is torn down, checkpoints are fsynced, metrics.jsonl is closed), but a
    # gloo/c10d object torn down at interpreter exit now and then aborts the process
    # ("terminate called without an active exception", with no Python frame left), which made
    # torchrun report a finished run as failed: tests/test_distributed.py.
    code = 0
    try:
        app()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
