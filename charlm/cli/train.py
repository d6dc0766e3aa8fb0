"""`charlm train`: options from the config dataclasses, the run, the closing sample."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from .app import CONTEXT, _M, _T, _console, _state, app, handles_errors


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
    from ..training import resolve_options
    from ..config import to_toml, ModelConfig

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
    from ..training import train as run_training

    console = _console()
    view = TrainingView(console, quiet=_state["quiet"])
    try:
        run_dir = run_training(train_config, model_config, on_event=view)
    finally:
        view.close()
    if train_config.sample_length and not _state["quiet"]:
        from ..api import load

        lm = load(run_dir, device="cpu")
        console.print(f"[bold]sample[/] (temperature 0.8, from {lm.path}/best.pt):", highlight=False)
        for pieces in lm.stream(length=train_config.sample_length, temperature=0.8, seed=train_config.seed):
            sys.stdout.write(pieces[0])
            sys.stdout.flush()
        sys.stdout.write("\n")
