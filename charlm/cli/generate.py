"""`charlm sample` and `charlm evaluate`: use a trained model."""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from typing_extensions import Annotated

from ..config import MAX_PRIME_CHARS, SampleConfig
from ..errors import CharLMError, ConfigError
from ..textio import read_limited
from ..threads import use
from .app import (CONTEXT, app, device_option, get_console, handles_errors, json_option, stdout_taken,
                  threads_option, write_document)
from .progress import progress_bar
from .tables import metrics_table

SAMPLE_HELP = """Stream generated text to stdout as it is generated.

`--length` counts characters as displayed (after sentencepiece decoding and NFD recomposition: a
Hangul syllable is one character); an NFD model's sample ends on a whole syllable, never a loose
jamo. `--temperature 0` is greedy (the most likely token each step, deterministic). `--beam N`
searches N beams for the continuation with the best log-probability per token (the length
normalisation, so a beam that ends early on a stop string competes fairly) and prints it when the
search ends. `--stop STRING` (repeatable) ends a sample just before the first stop string it
produces; the stop string is not printed.

With `--num-samples N` the samples come one after another, each streamed as it is generated,
under a header line `--- sample I of N (seed S) ---`: sample I uses seed S, the `--seed` plus
I - 1, so `--seed S` alone gives that sample again.

`--interactive`: a prompt loop. Each line you type is fed to the model (without its newline) and
the model's continuation is printed; both carry one state, so the conversation goes on. An empty
line continues from where the model stopped. Commands: /temp T, /length N, /top N (the N likeliest
next tokens with their probabilities; type a number to append that one), /reset (back to the
prime), /help, /quit. On a terminal: line editing and history, a word of feedback after each
command, Ctrl-C stops a reply (not the session), Ctrl-D leaves. When stdin is not a terminal,
lines are read plainly, no prompt or feedback is shown, and stdout carries the replies only.

Example: `charlm sample runs/NAME --prime 'ROMEO:' --length 300 --temperature 0.7 --seed 1`.
"""


@app.command(context_settings=CONTEXT, help=SAMPLE_HELP)
@handles_errors
def sample(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory (its best.pt).")],
    prime: Annotated[str, typer.Option(help="Text to start from.")] = "",
    prime_file: Annotated[Optional[Path], typer.Option(help="Read the prime from this UTF-8 file (any size: it runs through the model in chunks).")] = None,
    length: Annotated[int, typer.Option(help="Characters to generate, counted as displayed.")] = 500,
    temperature: Annotated[float, typer.Option(help="Softmax temperature (>= 0; 0 is greedy).")] = 0.8,
    top_k: Annotated[Optional[int], typer.Option(help="Sample among the k most likely tokens.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass in (0, 1].")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed in [0, 2**63): the same seed gives the same text. Without one, each run draws a new random seed.")] = None,
    num_samples: Annotated[int, typer.Option(help="Samples, streamed one after another (seeds --seed, --seed + 1, ...).")] = 1,
    beam: Annotated[Optional[int], typer.Option(help="Beam search with N beams instead of sampling.")] = None,
    stop: Annotated[Optional[list[str]], typer.Option(metavar="<text>", help="End a sample before this string (repeatable; not printed).")] = None,
    records: Annotated[Optional[bool], typer.Option("--records/--no-records", metavar="", help="Each sample is one record: from a fresh state, ending at the record separator (default: as the model was trained).")] = None,
    interactive: Annotated[bool, typer.Option("--interactive", metavar="", help="A prompt loop with carried state (see above).")] = False,
    device: Annotated[str, device_option()] = "cpu",
    threads: Annotated[str, threads_option()] = "auto",
) -> None:
    if prime_file is not None:
        prime = _read_prime(prime_file)
    config = SampleConfig(prime=prime, length=length, temperature=temperature, top_k=top_k, top_p=top_p,
                          seed=seed, num_samples=num_samples, beam=beam, stop=tuple(stop or ())).validate()
    if interactive and (beam is not None or num_samples != 1):
        raise ConfigError("--interactive samples one reply at a time: drop --beam and --num-samples")
    use(threads)
    from ..api import load

    lm = load(checkpoint, device=device)
    config = dataclasses.replace(config, record_sep=lm.record_sep(records)).validate()
    if interactive:
        _interactive(lm, config)
        return
    _stream_samples(lm, config)


def _read_prime(path: Path) -> str:
    """The prime file's text, read in blocks and refused past the longest prime (a pipe or a
    device that never ends costs one block)."""
    try:
        with open(path, "rb") as f:
            return read_limited(f, MAX_PRIME_CHARS, f"--prime-file {path}")
    except OSError as e:
        raise ConfigError(f"cannot read --prime-file {path}: {e.strerror or e}") from None


def _stream_samples(lm, config) -> None:
    """Each sample streamed in turn: the prime, then the text as it comes, then a newline.

    Nothing is written before the first sample has produced its first piece: by then the prime
    has been read by the model, so a prime it cannot take fails with stdout still empty."""
    from ..sampling import SEED_SPACE

    out = sys.stdout
    first_seed = random.randrange(SEED_SPACE) if config.seed is None else config.seed
    for i in range(config.num_samples):
        seed = (first_seed + i) % SEED_SPACE
        one = dataclasses.replace(config, num_samples=1, seed=seed)
        pieces = lm.stream(prime=one.prime, length=one.length, temperature=one.temperature,
                           top_k=one.top_k, top_p=one.top_p, seed=seed, beam=one.beam, stop=one.stop,
                           records=one.record_sep is not None)
        first = next(pieces, "")          # runs the prime: a bad one raises here
        if config.num_samples > 1:
            out.write(f"--- sample {i + 1} of {config.num_samples} (seed {seed}) ---\n")
        out.write(one.prime + first)
        out.flush()
        for piece in pieces:
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()


INTERACTIVE_HELP = """Type text and press Enter: the model continues it. An empty line continues from where it stopped.
  /temp T     temperature (0 is greedy)        /length N   characters per reply
  /top N      the N likeliest next tokens; then type a number to append that one (anything else
              is read as usual: a command, or text)
  /reset      forget everything (back to the prime)
  /help       this text                        /quit       leave (or Ctrl-D)
Ctrl-C stops a reply (the conversation goes on from what was shown)."""


def _interactive(lm, config) -> None:
    """The prompt loop of `--interactive`. On a terminal: line editing and history (readline), a
    prompt, a word of feedback after each command, Ctrl-C to cut a reply short. Otherwise plain
    lines from stdin, and stdout carries the replies only."""
    from ..sampling import Session

    session = Session(lm.model, lm.tokenizer, config, lm.device)
    tty = _stdin_is_terminal()
    if tty:
        _line_editing()
        _say(INTERACTIVE_HELP)
    pending: Optional[str] = None       # a line /top read that was not a choice
    while True:
        line = pending if pending is not None else _read_line("> " if tty else None)
        pending = None
        if line is None or line.strip() in ("/quit", "/exit"):
            return
        if line.startswith("/"):
            pending = _command(session, line.strip(), tty)
        else:
            _turn(session, line, tty)


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _line_editing() -> None:
    """Arrow keys, editing and history for input(): readline, where this Python has it."""
    try:
        import readline  # noqa: F401  (importing it is what turns it on)
    except ImportError:
        pass


def _turn(session, line: str, tty: bool) -> None:
    """Feed what was typed, then stream the reply; Ctrl-C (on a terminal) cuts the reply short."""
    unknown = session.tokenizer.unknown_chars(line)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:20])
        _warn(f"what you typed has characters the model's vocabulary lacks: {shown}; type it without them")
        return
    try:
        session.feed(line)
        for piece in session.reply():
            sys.stdout.write(piece)
            sys.stdout.flush()
    except CharLMError as e:
        _warn(str(e))
    except KeyboardInterrupt:
        if not tty:
            raise
        sys.stdout.write("\n")
        _say("(reply stopped; the conversation goes on from what was shown)")
        return
    sys.stdout.write("\n")
    sys.stdout.flush()


def _read_line(prompt: Optional[str]) -> Optional[str]:
    """The next line without its newline; None at the end of input (Ctrl-D). On a terminal
    Ctrl-C at the prompt drops the line typed so far and asks again, as a shell does."""
    if prompt is not None:
        while True:
            try:
                return input(prompt)
            except EOFError:
                sys.stdout.write("\n")       # leave the terminal on a fresh line
                sys.stdout.flush()
                return None
            except KeyboardInterrupt:
                sys.stdout.write("\n")
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n").rstrip("\r")


def _warn(message: str) -> None:
    get_console(stderr=True).print(f"[red]error:[/] {escape(message)}", soft_wrap=True)


def _say(message: str) -> None:
    """A word to the person at the terminal (stderr: stdout carries the model's text only)."""
    get_console(stderr=True).print(message, markup=False, highlight=False, soft_wrap=True)


def _command(session, line: str, tty: bool) -> Optional[str]:
    """One slash command of the interactive loop; a mistake is one line on stderr, the loop goes
    on. On a terminal each command says what it did. Returns a line read after /top that was not a
    choice, for the loop to take as the next one."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    pending = None
    try:
        if name == "/help":
            sys.stdout.write(INTERACTIVE_HELP + "\n")
        elif name == "/reset":
            session.reset()
            done = "reset: back to the prime, nothing remembered"
        elif name == "/temp":
            value = _number(name, arg, float, "a temperature >= 0 (0 is greedy)", lambda v: v >= 0)
            session.config = dataclasses.replace(session.config, temperature=value).validate()
            done = f"temperature {value:g}" + (" (greedy)" if value == 0 else "")
        elif name == "/length":
            value = _number(name, arg, int, "a whole number of characters >= 0", lambda v: v >= 0)
            session.config = dataclasses.replace(session.config, length=value).validate()
            done = f"length {value} characters per reply"
        elif name == "/top":
            pending = _top(session, _number(name, arg or "10", int, "a whole number >= 1", lambda v: v >= 1), tty)
        else:
            _warn(f"unknown command {name!r}: type /help for the list")
        if tty and name in ("/reset", "/temp", "/length"):
            _say(done)
    except CharLMError as e:
        _warn(str(e))
    sys.stdout.flush()
    return pending


def _number(command: str, arg: str, kind, wanted: str, ok) -> Any:
    """The argument of a command as a number, or ConfigError in the words of what was typed."""
    try:
        value = kind(arg)
    except ValueError:
        value = None
    if value is None or not ok(value) or (kind is float and value != value):
        raise ConfigError(f"{command} takes {wanted}, got {arg!r}" if arg else f"{command} takes {wanted}")
    return value


def _top(session, n: int, tty: bool) -> Optional[str]:
    """Show the n likeliest next tokens, numbered; a number on the next line appends that token.
    Any other line (a command such as /temp, or text) is no choice: it is returned, for the loop to
    read as it reads every line, rather than refused and lost."""
    choices = session.top(n)
    for k, (_, text, p) in enumerate(choices, 1):
        sys.stdout.write(f"{k:>3}  {text!r:<8} {p:.4f}\n")
    sys.stdout.flush()
    answer = _read_line("pick (number, or Enter to skip)> " if tty else None)
    if answer is None or not answer.strip():
        return None                      # Enter skips (and the end of input ends the loop next)
    if not answer.strip().isdigit():
        return answer
    if 1 <= int(answer) <= len(choices):
        sys.stdout.write(session.pick(choices[int(answer) - 1][0]) + "\n")
    else:
        _warn(f"no choice {answer.strip()!r}: pick a number from 1 to {len(choices)}")
    return None


EVALUATE_SCHEMA = "charlm.evaluate/1"


@app.command(context_settings=CONTEXT)
@handles_errors
def evaluate(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file, or run directory (its best.pt).")],
    text_file: Annotated[str, typer.Argument(help="UTF-8 text file (or folder) to evaluate on.")],
    tail: Annotated[Optional[float], typer.Option(
        help="Evaluate only this last fraction of the file's characters (0.1: the usual validation split).")] = None,
    json_out: Annotated[Optional[str], json_option("the figures")] = None,
    records: Annotated[Optional[bool], typer.Option("--records/--no-records", metavar="", help="Zero the state at every record start (default: as the model was trained).")] = None,
    device: Annotated[str, device_option()] = "auto",
    threads: Annotated[str, threads_option()] = "auto",
) -> None:
    """Loss (nats/token), bits per character and perplexity over a whole file, evaluated statefully.

    Example: `charlm evaluate runs/NAME input.txt --tail 0.1`.
    """
    if tail is not None and not 0 < tail <= 1:
        raise ConfigError(f"--tail must be in (0, 1], got {tail}")
    use(threads)
    from ..api import load

    lm = load(checkpoint, device=device)
    with progress_bar("evaluate", wanted=not stdout_taken(json_out)) as progress:
        result = lm.evaluate_file(text_file, tail=tail, records=records, progress=progress)
    record = {"schema": EVALUATE_SCHEMA, "checkpoint": str(lm.path), "file": text_file, "tail": tail,
              "records": lm.record_sep(records) is not None, **result.as_dict()}
    if json_out is not None:
        write_document(record, json_out)
        if stdout_taken(json_out):
            return
    table = metrics_table(f"evaluate {text_file}" + (f" (last {tail:g})" if tail else ""),
                          ["figure", "value"],
                          [["loss (nats/token)", f"{result.loss:.4f}"],
                           ["bits per character", f"{result.bits_per_char:.4f}"],
                           ["perplexity (per token)", f"{result.perplexity:.3f}"],
                           ["tokens", f"{result.tokens:,}"],
                           ["characters", f"{result.chars:,.0f}"]])
    get_console().print(table)
