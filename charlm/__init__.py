"""charlm: character-level recurrent language models, and why they forget.

The package imports nothing heavy at start-up (``charlm --help`` stays fast); the Python API
functions below import torch when called.
"""

from ._version import __version__  # noqa: E402

__all__ = ["__version__", "load", "train", "LanguageModel", "ModelConfig", "TrainConfig", "SampleConfig",
           "CharLMError"]

from .config import ModelConfig, SampleConfig, TrainConfig  # noqa: E402  (no torch inside)
from .errors import CharLMError  # noqa: E402


def load(path, device: str = "auto"):
    """Load a trained model (checkpoint file or run directory): see charlm.api.LanguageModel."""
    from .api import load as _load

    return _load(path, device)


def train(config, model=None, on_event=None, should_stop=None, grad_probe=None):
    """Train headless with a TrainConfig (and optional ModelConfig); returns the run directory.
    See charlm.api.train for every argument."""
    from .api import train as _train

    return _train(config, model, on_event, should_stop=should_stop, grad_probe=grad_probe)


def __getattr__(name: str):
    # LanguageModel lives in charlm.api, which imports torch: loaded on first use, so that
    # `import charlm` (and `charlm --help`) stays light.
    if name == "LanguageModel":
        from .api import LanguageModel

        return LanguageModel
    raise AttributeError(f"module 'charlm' has no attribute {name!r}")
