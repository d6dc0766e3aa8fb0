"""Samples during training: at every evaluation a short sample, the same seed each time, so the
text of step 500 and step 5000 can be compared; appended to RUN/samples.txt (rank 0).

The sample draws from its own generator (charlm.sampling seeds one per sample) and the model is
in eval mode (no dropout), so the training's random streams are untouched and a resumed run stays
bit-exact. On resume samples.txt is cut back to the resumed step, like metrics.jsonl.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from ..config import SampleConfig
from ..errors import NumericError, RunDirError
from ..sampling import sample_text
from ..util import open_no_follow, run_write_error

HEADER = re.compile(r"^--- step (\d+) ---$")
TEMPERATURE = 0.8


def eval_sample(model: torch.nn.Module, tokenizer, length: int, seed: int,
                device: torch.device) -> Optional[str]:
    """``length`` characters from the model as it is now (None when its scores are not finite: a
    diverging run is the numeric guard's business, not a reason to stop); its mode is restored."""
    was_training = model.training
    try:
        with torch.no_grad():
            return sample_text(model, tokenizer, SampleConfig(length=length, temperature=TEMPERATURE,
                                                              seed=seed), device)[0]
    except NumericError:
        return None
    finally:
        model.train(was_training)


class SamplesLog:
    """RUN/samples.txt: one '--- step N ---' header per sample, then its text."""

    def __init__(self, path: Path, keep_upto: int | None):
        """``keep_upto``: the resumed step (entries after it are dropped); None: a new file."""
        self.path = Path(path)
        try:
            if keep_upto is None:
                self.path.unlink(missing_ok=True)
            elif self.path.exists():
                self._cut(keep_upto)
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: OSError) -> RunDirError:
        return RunDirError(run_write_error(self.path, e))

    def _cut(self, step: int) -> None:
        """Drop the entries of steps after ``step`` (written after the checkpoint resumed from)."""
        with open_no_follow(self.path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        for i, line in enumerate(lines):
            m = HEADER.match(line.rstrip("\n"))
            if m and int(m.group(1)) > step:
                with open_no_follow(self.path, "w", encoding="utf-8") as f:
                    f.write("".join(lines[:i]))
                return

    def append(self, step: int, text: str) -> None:
        try:
            with open_no_follow(self.path, "a", encoding="utf-8") as f:
                f.write(f"--- step {step} ---\n{text}\n\n")
        except OSError as e:
            raise self._error(e) from None


def read_samples(path: Path) -> list[tuple[int, str]]:
    """(step, text) of every entry of a samples.txt."""
    out: list[tuple[int, str]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
        m = HEADER.match(line.rstrip("\n"))
        if m:
            out.append((int(m.group(1)), ""))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + line)
    return [(step, text[:-2] if text.endswith("\n\n") else text) for step, text in out]
