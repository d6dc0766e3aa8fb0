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
from .errors import CharLMError

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

            fail(escape(str(e)), e.exit_code)
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
    model: Annotated[Optional[str], typer.Option(help="Cell: lstm, gru or rnn (tanh). [default: lstm]")] = None,
    hidden_size: Annotated[Optional[int], typer.Option(help="Units per layer. [default: 384]")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Recurrent layers. [default: 1]")] = None,
    embedding_size: Annotated[Optional[int], typer.Option(help="Embedding width. [default: 64]")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout in [0, 1). [default: 0]")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="BPTT chunk length k. [default: 64]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Parallel streams B (per process). [default: 64]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate. [default: 3e-3]")] = None,
    min_lr_ratio: Annotated[Optional[float], typer.Option(help="Final lr as a fraction of --lr. [default: 0.1]")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="Linear warm-up steps. [default: 50]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay. [default: 0]")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="Global gradient-norm clip; 0 disables. [default: 1.0]")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Stop after this many epochs (whole run).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (whole run).")] = None,
    max_time: Annotated[Optional[float], typer.Option(
        help="Stop after this many seconds (whole run). With no stopping option: 180.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Tail of the corpus held out. [default: 0.1]")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Evaluate every N steps. [default: 200]")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="char, spm-char, bpe or unigram. [default: char]")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="Sentencepiece vocabulary size.")] = None,
    min_char_count: Annotated[Optional[int], typer.Option(help="Rarer characters become <unk>. [default: 1]")] = None,
    normalize: Annotated[Optional[str], typer.Option(help="none, nfc or nfd (Hangul -> jamo). [default: none]")] = None,
    out: Annotated[Optional[str], typer.Option(help="Run directory. [default: a new runs/DATE-TIME]")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume", help="Continue the run in --out.")] = None,
    force: Annotated[Optional[bool], typer.Option("--force", help="Replace an existing run directory.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed. [default: 1337]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or mps. [default: auto]")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32, fp16 or bf16 (CUDA). [default: fp32]")] = None,
    grad_report_every: Annotated[Optional[int], typer.Option(
        help="Log a gradient-through-time summary every N steps. [default: 0, never]")] = None,
    tensorboard: Annotated[Optional[bool], typer.Option("--tensorboard", help="Write TensorBoard event files.")] = None,
    sample_length: Annotated[Optional[int], typer.Option(help="Characters sampled at the end. [default: 300]")] = None,
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
                    max_time=max_time, val_fraction=val_fraction, eval_every=eval_every,
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
