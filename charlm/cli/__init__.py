"""The `charlm` command line: the Typer app (app.py), one module per product command group, the
live training view (training_view.py) and shared tables (tables.py); the lab's commands, each
with its own tables and charts, are in lab/. Only this package imports typer or rich; the core
raises CharLMError and emits events, and these modules turn them into one line or a live view."""

# Each module registers its commands on app when imported; this order is the order of --help.
from . import train, generate, score, runs, corpus, export  # noqa: F401,I001
from .lab import gradients, truncation, context, sweep, cells, attention  # noqa: F401,I001
from .app import app, main

__all__ = ["app", "main"]
