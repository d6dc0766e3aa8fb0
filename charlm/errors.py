"""Errors a user can act on.

The core raises these; the CLI (charlm/cli/app.py) prints the message as one red line and exits 1. Every message
says what was wrong and, where it helps, what to do about it. Anything that is *not* a
CharLMError is a bug in charlm and is allowed to show a traceback.
"""


class CharLMError(Exception):
    """Base class: a mistake or a condition the user can fix."""

    exit_code = 1


class ConfigError(CharLMError):
    """An option or a config file value is invalid."""


class CorpusError(CharLMError):
    """The corpus is missing, empty, not text, or too short for the chosen shapes."""


class TokenizerError(CharLMError):
    """Text cannot be tokenised (unknown characters, vocabulary limits)."""


class CheckpointError(CharLMError):
    """A checkpoint is missing, unreadable, unsafe or not a charlm checkpoint."""


class RunDirError(CharLMError):
    """A run directory exists, is a file, or cannot be written."""


class DeviceError(CharLMError):
    """The requested device or precision is not available here."""


class NumericError(CharLMError):
    """Training diverged (non-finite loss or gradients) and could not recover."""


class DownloadError(CharLMError):
    """A named corpus could not be fetched or failed its checksum."""


class MissingExtra(CharLMError):
    """An optional dependency (the `plot` or `tensorboard` extra) is not installed."""


class Interrupted(CharLMError):
    """Training was interrupted (Ctrl-C / SIGTERM) after saving ``last.pt``."""

    exit_code = 130
