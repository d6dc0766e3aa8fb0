"""charlm: character-level recurrent language models, and why they forget.

The package imports nothing heavy at start-up (``charlm --help`` stays fast); the Python API
functions below import torch when called.
"""

from ._version import __version__  # noqa: E402

__all__ = ["__version__", "load", "train", "ModelConfig", "TrainConfig", "SampleConfig", "CharLMError"]

from .config import ModelConfig, SampleConfig, TrainConfig  # noqa: E402  (no torch inside)
from .errors import CharLMError  # noqa: E402


def load(path, device: str = "auto"):
    """Load a trained model (checkpoint file or run directory): see charlm.api.LanguageModel."""
    from .api import load as _load

    return _load(path, device)


def train(config, model=None, on_event=None):
    """Train headless with a TrainConfig (and optional ModelConfig); returns the run directory."""
    from .api import train as _train

    return _train(config, model, on_event)
