"""The `charlm` command line: parse options, build configs, call the core, render.

Only charlm/cli imports typer or rich. Every command catches CharLMError and prints
its message as one red line on stderr (exit 1; 130 after Ctrl-C). torch is imported inside the
commands that need it, so `charlm --help` starts fast.
"""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from typing_extensions import Annotated

from .._version import __version__
from ..config import TrainConfig, field_help
from ..errors import CharLMError
from ..util import json_safe, write_user_file

CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    name="charlm", context_settings=CONTEXT, no_args_is_help=True, rich_markup_mode="rich",
    help="Character-level recurrent language models: train, sample, evaluate, and measure how far "
         "back the gradient reaches.\n\nExamples:\n\n  charlm train                      # built-in corpus, 3 minutes\n\n"
         "  charlm train input.txt --max-time 600\n\n  charlm sample runs/NAME --prime 'ROMEO:'\n\n"
         "  charlm inspect-gradients --models rnn,lstm,gru")

cli_state: dict[str, Any] = {"quiet": False}   # the root options every command reads (--quiet)


def _width() -> Optional[int]:
    """COLUMNS when it is a usable width; else None (Rich then asks the terminal, or uses 80).

    Rich takes COLUMNS=0 at its word and renders everything, errors included, into no columns.
    """
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if "COLUMNS" not in os.environ else 80


class _Console(Console):
    """Rich's console, except that a broken pipe is an exception the command handles: Rich's own
    answer is SystemExit(1), which would end a training run that can go on without a display."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def get_console(stderr: bool = False) -> Console:
    no_color = bool(os.environ.get("NO_COLOR"))
    return _Console(stderr=stderr, no_color=no_color, highlight=False, width=_width())


def silence_stdout() -> None:
    """Point descriptor 1 at /dev/null once stdout is a broken pipe, so what is still buffered for
    it (and the flush at exit) goes nowhere instead of failing again ("Exception ignored ...")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass   # not a real file: a test runner's capture, or the closed-stdout stand-in


class _ClosedStream(io.TextIOBase):
    """sys.stdout when the process started with it closed (`charlm info RUN >&-`). Python leaves
    None there, and a write to None is a traceback; this write fails as a write to a closed file
    does, so a command that has something to say reports it in one line."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")


def _sane_environment() -> None:
    """Repair what a hostile environment hands us before any command runs."""
    for name in ("COLUMNS", "LINES"):   # COLUMNS=0 would make every line, errors too, vanish
        if name in os.environ and not (os.environ[name].isdigit() and int(os.environ[name]) > 0):
            del os.environ[name]
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            # Started with the descriptor closed: hold it with /dev/null, so that no file the run
            # opens later (a checkpoint, metrics.jsonl) becomes descriptor 1 or 2 by accident.
            os.open(os.devnull, os.O_WRONLY)
            setattr(sys, name, _ClosedStream() if name == "stdout" else open(os.devnull, "w"))


def device_option() -> Any:
    """The `--device` option of every command that runs a model, in `train --device`'s words
    (TrainConfig.device's docstring); each command gives its own default."""
    return typer.Option(help=field_help(TrainConfig)["device"])


def json_option(what: str) -> Any:
    """The `--json FILE` option every command shares."""
    return typer.Option("--json", metavar="<file>", show_default=False,
                        help=f"Write {what} as one JSON document to <file> ('-': stdout, and nothing else there).")


def csv_option(what: str) -> Any:
    """The `--csv FILE` option of the lab's commands, beside --json."""
    return typer.Option("--csv", metavar="<file>", show_default=False,
                        help=f"Write {what} as CSV to <file> ('-': stdout, and nothing else there).")


def text_file_argument(verb: str = "read") -> Any:
    """The optional TEXT argument of the lab's commands that read a run on some text."""
    return typer.Argument(help=f"UTF-8 text to {verb} (default: the validation split of the checkpoint's corpus).",
                          show_default=False)


def threads_option() -> Any:
    """The `--threads` option of the commands that use a model (train's comes from TrainConfig)."""
    return typer.Option(help="CPU threads: 'auto' (the command's own choice, one thread for small work, "
                             "never more than the CPUs this process may use: affinity and cgroup quota) "
                             "or a number that pins it.")


def write_document(doc: Any, dest: str, what: str = "--json") -> None:
    """The one JSON convention: ``--json FILE`` writes one document to FILE, ``--json -`` to
    stdout (and the command then prints nothing else there). ``doc`` is JSON text or a value."""
    text = doc if isinstance(doc, str) else json.dumps(json_safe(doc), ensure_ascii=False, indent=1) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        write_user_file(dest, text)     # a full disk leaves no empty file behind
    except OSError as e:
        raise CharLMError(f"cannot write {what} {dest}: {e.strerror or e}") from None


def write_study(study: Any, json_out: Optional[str], csv_out: Optional[str]) -> None:
    """A lab study's --json and --csv documents (it has to_json() and csv_text())."""
    if json_out is not None:
        write_document(study.to_json(), json_out)
    if csv_out is not None:
        write_document(study.csv_text(), csv_out, "--csv")


def say_written(console: Console, **paths: Any) -> None:
    """'wrote json FILE' for each document a command wrote (nothing under --quiet)."""
    for label, path in paths.items():
        if path is not None and not cli_state["quiet"]:
            console.print(f"wrote {label} {path}", highlight=False)


def stdout_taken(*dests: Optional[str]) -> bool:
    """True when a document goes to stdout, so the human report must not (usage error for two)."""
    wanting = [d for d in dests if d is not None and str(d) == "-"]
    if len(wanting) > 1:
        raise typer.BadParameter("only one of --json - and --csv - can write to stdout")
    return bool(wanting)


def shown_path(path: str | os.PathLike) -> str:
    """A path as charlm prints it: relative to the current folder when it lies below it
    (runs/a/best.pt rather than /home/.../runs/a/best.pt), else as it is."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except (OSError, ValueError):
        return str(path)


def is_rank_zero() -> bool:
    """False on every torchrun worker but rank 0: what a run shows, it shows once (read from the
    environment, so that --help never imports torch)."""
    return os.environ.get("RANK", "0") == "0"


def fail(message: str, code: int = 1) -> None:
    """Print one red line on stderr and exit. A value quoted in the message may span lines (a
    tensor's repr, from a hostile checkpoint): its lines are joined, so the line stays one."""
    message = " ".join(part.strip() for part in message.splitlines() if part.strip())
    get_console(stderr=True).print(f"[red]error:[/] {message}", soft_wrap=True, markup=True)
    raise typer.Exit(code)


def handles_errors(func: Callable) -> Callable:
    """Turn the core's CharLMError into one line and an exit code; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CharLMError as e:
            # Under torchrun every rank raises the same error (rank 0 decides and tells the
            # others): rank 0 says it; the first rank of each other node says it once, tagged.
            rank, local_rank = os.environ.get("RANK", "0"), os.environ.get("LOCAL_RANK", "0")
            if rank != "0" and (local_rank != "0" or type(e).__name__ == "Interrupted"):
                raise typer.Exit(e.exit_code)
            fail(escape(str(e) if rank == "0" else f"rank {rank}: {e}"), e.exit_code)
        except KeyboardInterrupt:
            get_console(stderr=True).print("[red]interrupted[/]")
            raise typer.Exit(130)
        except BrokenPipeError:  # `charlm sample ... | head`: the reader has all it wanted
            silence_stdout()
            raise typer.Exit(0)
        except OSError as e:
            # The last line of defence, for what the environment does (a name too long, no
            # permission, a full disk, a closed stdout) where no closer check caught it first.

            where = f"{os.fsdecode(e.filename)}: " if e.filename is not None else ""
            fail(escape(f"{where}{e.strerror or e}"), 1)

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"charlm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", metavar="", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="Print only results and errors.")] = False,
) -> None:
    cli_state["quiet"] = quiet


def main() -> None:
    _sane_environment()
    # The same test as distributed.launched_by_torchrun, without importing torch for --help.
    if not ("RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1):
        try:
            app()
        except OSError as e:   # outside any command (--help, --version) into a closed stdout
            print(f"error: {e.strerror or e}", file=sys.stderr)
            sys.exit(1)
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
