"""Training with truncated BPTT.

launch.py decides what a launch does (the options: defaults < checkpoint < TOML < flags; new, fill
or resume; the checkpoint, read once); setup.py validates the rest and builds the run into one
value; state.py holds the run's state (``Progress`` is the checkpoint's progress record); step.py
trains one chunk; loop.py is the loop.
"""

from .launch import Launch, plan_configs, plan_launch, resolve_options
from .loop import train, train_launch
from .step import lr_at

__all__ = ["Launch", "lr_at", "plan_configs", "plan_launch", "resolve_options", "train", "train_launch"]
