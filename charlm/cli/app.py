"""The `charlm` command line: parse options, build configs, call the core, render.

Only this module and display.py import typer or rich. Every command catches CharLMError and prints
its message as one red line on stderr (exit 1; 130 after Ctrl-C). torch is imported inside the
commands that need it, so `charlm --help` starts fast.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from typing_extensions import Annotated

from .._version import __version__
from ..config import ModelConfig, TrainConfig
from ..errors import CharLMError

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
