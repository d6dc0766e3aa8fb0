"""Training with truncated BPTT: option resolution, set-up, the run's state, the step, the loop."""

from .run import lr_at, resolve_options, train

__all__ = ["lr_at", "resolve_options", "train"]
