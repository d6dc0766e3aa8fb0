"""The `charlm` command line: the Typer app (app.py), one module per command group, and the Rich
display (display.py). Only this package imports typer or rich; the core raises CharLMError and
emits events, and these modules turn them into one line of text or a live view."""

from . import train, generate, runs, lab, corpus, context  # noqa: F401,I001  (each registers its commands, in this order)
from .app import app, main

__all__ = ["app", "main"]
