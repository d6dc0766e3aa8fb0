"""Training with truncated BPTT.

options.py resolves the options (defaults < checkpoint < TOML < flags); setup.py validates
everything and builds the run into one value; state.py holds the run's state (``Progress`` is the
checkpoint's progress record); step.py trains one chunk; loop.py is the loop.
"""

from .loop import train
from .options import Launch, plan_launch, resolve_options
from .step import lr_at

__all__ = ["Launch", "lr_at", "plan_launch", "resolve_options", "train"]
