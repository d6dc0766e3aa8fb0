"""`charlm train`: its options are the config dataclasses' fields, the run, the closing sample.

The options are not restated here. `charlm.config.train_options()` lists every field of
ModelConfig and TrainConfig with its type, default and docstring; `options_signature` turns each
into a Typer option, so a field added to TrainConfig is a flag with its help and its default, and a
TOML key, with no other edit. Every flag defaults to None ("not given"): option resolution merges
defaults < checkpoint (on --resume) < TOML file < the flags actually given.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from typing_extensions import Annotated

from ..config import OPTION_GROUPS, ModelConfig, to_toml, train_options
from .app import CONTEXT, app, cli_state, get_console, handles_errors, is_rank_zero, shown_path
from .training_view import TrainingView

POSITIONAL = "corpus"    # the one field given as an argument: `charlm train input.txt`


def _help(option) -> str:
    """The field's docstring, and "[default: ...]" unless the default is unset or a switch's off."""
    text = escape(option.help)
    value = option.default
    if value is None or isinstance(value, bool):
        return text
    # A model's recipe (config.RECIPES) beside the default it replaces: "[default: 320; transformer: 128]".
    shown = "; ".join([_shown(value), *(f"{model}: {_shown(v)}" for model, v in option.recipes.items())])
    return f"{text} \\[default: {escape(shown)}]"


def _shown(value) -> str:
    """A default as --help shows it; a string escaped, so a newline reads "\\n" rather than a blank."""
    return format(value, "g") if isinstance(value, float) else str(value).encode("unicode_escape").decode()


def _parameter(option) -> inspect.Parameter:
    """One dataclass field as a Typer parameter: Optional[type], default None."""
    help_text = _help(option)
    if option.name == POSITIONAL:
        info = typer.Argument(help=help_text, show_default=False)
    else:
        flag = "--" + option.name.replace("_", "-")
        # A bool field is a switch that is given or not (--resume), with no value to show; None
        # keeps "not given" apart from False, so a TOML file's `resume = true` is not overridden
        # by an absent flag.
        flag_only = option.type is bool
        info = typer.Option(*((flag,) if flag_only else ()), help=help_text, show_default=False,
                            rich_help_panel=option.group, **({"metavar": ""} if flag_only else {}))
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[option.type], info])


def options_signature(fixed: int, leave_out: tuple[str, ...] = ()):
    """Decorator: give ``func(<fixed params>, **options)`` a signature Typer reads as its own
    ``fixed`` first parameters followed by every train option (but ``leave_out``)."""
    def decorate(func) -> Any:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in list(inspect.signature(func, eval_str=True).parameters.values())[:fixed]]
        # Grouped as --help shows them (sorted is stable: each group keeps the fields' order).
        ordered = sorted(train_options(), key=lambda o: OPTION_GROUPS.index(o.group))
        options = [_parameter(o) for o in ordered if o.name not in leave_out]
        positional = [p for p in options if p.name == POSITIONAL]
        func.__signature__ = inspect.Signature(positional + own + [p for p in options if p not in positional])
        return func
    return decorate


@app.command(context_settings=CONTEXT)
@handles_errors
@options_signature(fixed=2)      # config, print_config
def train(
    config: Annotated[Optional[Path], typer.Option(help="TOML file of options (flags override it).")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", metavar="", help="Print the resolved TOML and exit.")] = False,
    **options: Any,
) -> None:
    """Train a language model with truncated BPTT; checkpoints go to the run directory.

    Examples: `charlm train`, `charlm train input.txt --max-time 600 --model gru`,
    `charlm train --out runs/a --resume`.
    """
    from ..training import plan_launch

    launch = plan_launch(options, str(config) if config else None)
    train_config = launch.config
    if print_config:
        typer.echo(to_toml(launch.model_config or ModelConfig(), train_config), nl=False)
        return

    from ..training import train_launch

    probe = None
    if train_config.grad_report_every:   # the lab's instrument, wired in here: the trainer never imports the lab
        from ..lab.gradients import horizon_summary as probe

    console = get_console()
    view = TrainingView(console, quiet=cli_state["quiet"])
    try:
        run_dir = train_launch(launch, on_event=view, grad_probe=probe)
    finally:
        view.close()
    # Under torchrun every rank returns here with the same run: only rank 0 shows its sample.
    if train_config.sample_length and not cli_state["quiet"] and not view.stdout_closed and is_rank_zero():
        _closing_sample(console, run_dir, train_config)


def _closing_sample(console, run_dir: Path, train_config) -> None:
    """A few hundred characters from best.pt, so a first run ends with text to read."""
    from ..api import load

    lm = load(run_dir, device="cpu")
    console.print(f"[bold]sample[/] (temperature 0.8, from {escape(shown_path(lm.path))}/best.pt):", highlight=False)
    for piece in lm.stream(length=train_config.sample_length, temperature=0.8, seed=train_config.seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
