"""The `charlm` command line: the Typer app (app.py), one module per command group, and the Rich
display (display.py). Only this package imports typer or rich; the core raises CharLMError and
emits events, and these modules turn them into one line of text or a live view."""

# Each module registers its commands on app when imported; this order is the order of --help.
from . import train, generate, score, runs, lab, context, sweep, corpus, export  # noqa: F401,I001
from .app import app, main

__all__ = ["app", "main"]
