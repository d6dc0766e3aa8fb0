"""The Python API; the CLI is a thin layer over it.

    import charlm
    lm = charlm.load("runs/shakespeare")        # a run directory (best.pt) or a checkpoint file
    print(lm.sample(prime="ROMEO:", length=200, temperature=0.8, seed=1))
    print(lm.evaluate("Some held-out text.").bits_per_char)
    run_dir = charlm.train(charlm.TrainConfig(corpus="input.txt", max_time=60))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from .checkpoint import Checkpoint, load_model
from .config import ModelConfig, SampleConfig, TrainConfig
from .corpus.text import Corpus
from .devices import resolve_device
from .errors import ConfigError, CorpusError, NumericError
from .evaluation import EvalResult, evaluate_ids
from .events import ProgressCallback
from .export import export_model
from .records import separator_id
from .sampling import generate, sample_text
from .scoring import score_text
from .training import plan_configs, plan_launch, train_launch
from .training.launch import explicit_options
from .util import is_finite_number


class LanguageModel:
    """A trained model with its tokenizer, ready to sample, evaluate, score and export.

    The instruments that inspect it live in charlm.lab (``charlm.lab.gradients.study(lm)``,
    ``charlm.lab.context.study(lm)``): the product never imports the lab."""

    def __init__(self, model, tokenizer, checkpoint: Optional[Checkpoint], device: torch.device, path: Path):
        """``checkpoint``: the record the model was loaded from (None for a model built in memory)."""
        self.model = model
        self.tokenizer = tokenizer
        self.checkpoint = checkpoint if checkpoint is not None else Checkpoint.of_model(model, tokenizer)
        self.device = device
        self.path = path

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def stream(self, prime: str = "", length: int = 500, temperature: float = 0.8,
               top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
               beam: Optional[int] = None, stop: Sequence[str] | str = (),
               records: Optional[bool] = None) -> Iterator[str]:
        """Yield the new text of one sample as it is generated: non-empty strings whose join is
        exactly what ``sample()`` returns for the same options and seed.

        ``length`` counts characters as displayed; ``temperature=0`` is greedy; ``beam=N`` runs a
        beam search (the whole text arrives at the end); ``stop`` ends a sample just before a stop
        string (not included). ``records`` (default: as the model was trained) makes the sample one
        record: from a fresh state, ending at the record separator (charlm.records). For several
        samples generated together use ``stream_batch``.
        Options are checked here, before any work: a bad one raises ConfigError.
        """
        pairs = self.stream_batch(prime, length, temperature, top_k, top_p, seed, 1, beam, stop, records)
        return (piece for _, piece in pairs)   # not a generator function: options are checked now

    def stream_batch(self, prime: str = "", length: int = 500, temperature: float = 0.8,
                     top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
                     num_samples: int = 1, beam: Optional[int] = None, stop: Sequence[str] | str = (),
                     records: Optional[bool] = None) -> Iterator[tuple[int, str]]:
        """Generate ``num_samples`` samples together (one batch, faster than one after another) and
        yield ``(index, text)`` pairs as their text arrives, interleaved; ``text`` is never empty.
        Sample i has the text a single sample with ``seed + i`` gives. Options as ``stream``.
        """
        cfg = self._sample_config(prime, length, temperature, top_k, top_p, seed, num_samples, beam, stop,
                                  self.record_sep(records))
        return _pairs(generate(self.model, self.tokenizer, cfg, self.device))

    def sample(self, prime: str = "", length: int = 500, temperature: float = 0.8,
               top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
               num_samples: int = 1, beam: Optional[int] = None,
               stop: Sequence[str] | str = (), records: Optional[bool] = None) -> str | list[str]:
        """Generated text (without the prime); a list when num_samples > 1. Options as ``stream``."""
        cfg = self._sample_config(prime, length, temperature, top_k, top_p, seed, num_samples, beam, stop,
                                  self.record_sep(records))
        texts = sample_text(self.model, self.tokenizer, cfg, self.device)
        return texts[0] if num_samples == 1 else texts

    def record_sep(self, records: Optional[bool] = None) -> Optional[str]:
        """The record separator when records are on (``records``, by default as the model was
        trained with --records); None when they are off."""
        if records is not None and not isinstance(records, bool):
            raise ConfigError(f"records must be True, False or None, got {records!r:.80}")
        if records is None:
            records = bool(self.checkpoint.trained("records", False))
        return str(self.checkpoint.trained("record_sep", "\n")) if records else None

    @staticmethod
    def _sample_config(prime, length, temperature, top_k, top_p, seed, num_samples, beam, stop,
                       record_sep=None) -> SampleConfig:
        stops = () if stop is None else (stop,) if isinstance(stop, str) else stop
        return SampleConfig(prime=prime, length=length, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, num_samples=num_samples, beam=beam, stop=stops,
                            record_sep=record_sep).validate()

    def evaluate(self, text: str, records: Optional[bool] = None,
                 progress: Optional[ProgressCallback] = None) -> EvalResult:
        """Loss (nats/token), bits per character and perplexity over text, evaluated statefully.

        Refuses (CharLMError, one line) what would give a figure that means nothing: fewer than two
        tokens, text mostly outside the model's vocabulary, a loss that overflows. ``records``
        (default: as the model was trained) zeroes the state at every record start.
        ``progress(done, total)`` is called as the work goes (for a progress bar)."""
        if not isinstance(text, str):
            raise ConfigError(f"evaluate() takes the text as a str, got {type(text).__name__} "
                              f"(use evaluate_file() for a path)")
        _check_callable("progress", progress)
        ids = self.tokenizer.encode(text)
        if self.tokenizer.kind == "char" and len(ids) >= 2:
            unknown = int((ids[1:] == 0).sum())  # id 0 is <unk>: the model never saw these characters
            if unknown * 2 > len(ids) - 1:
                raise CorpusError(f"{unknown:,} of the {len(ids) - 1:,} characters to predict are not in the "
                                  f"model's vocabulary: this is not text of the kind it was trained on")
        sep = self.record_sep(records)
        separator = None if sep is None else separator_id(True, sep, self.tokenizer)
        result = evaluate_ids(self.model, ids, len(text), self.device, separator=separator, progress=progress)
        if not result.finite:
            raise NumericError("the model's loss over this text is not finite (its outputs overflow): "
                               "the checkpoint is damaged or training diverged")
        return result

    def evaluate_file(self, path: str | Path, tail: Optional[float] = None,
                      records: Optional[bool] = None, progress: Optional[ProgressCallback] = None) -> EvalResult:
        """Evaluate a UTF-8 file (or folder); with ``tail``, only that last fraction of its characters."""
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"evaluate_file() takes a file path, got {type(path).__name__}")
        if tail is not None and not (is_finite_number(tail) and 0 < tail <= 1):
            raise ConfigError(f"tail must be a number in (0, 1], got {tail!r}")
        return self.evaluate(Corpus.resolve(str(path)).text(tail), records=records, progress=progress)

    def score(self, text: str, top: int = 3, progress: Optional[ProgressCallback] = None):
        """Surprisal of each character of text, in bits, and the model's ``top`` guesses at each.

        Returns a charlm.scoring.ScoreResult: ``.bits`` per character (None where nothing was
        predicted: the first), ``.top``, ``.next``, ``.total_bits``, ``.bits_per_char`` (the figure
        ``evaluate`` gives for the same text) and ``.to_json()``. ``progress`` as for ``evaluate``.
        """
        if not isinstance(text, str):
            raise ConfigError(f"score() takes the text as a str, got {type(text).__name__}")
        if not isinstance(top, int) or isinstance(top, bool):
            raise ConfigError(f"top must be a whole number of guesses, got {top!r:.80}")
        _check_callable("progress", progress)
        return score_text(self.model, self.tokenizer, text, self.device, top=top, progress=progress)

    def export(self, path: str | Path, format: str = "onnx", force: bool = False) -> tuple[Path, Path]:
        """Write the step function (ids, state) -> (logits, state) as ONNX or TorchScript to path,
        and the vocabulary to path + ".vocab.json"; return both paths (charlm.export explains)."""
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(f"export() takes a file path, got {type(path).__name__}")
        return export_model(self.model, self.tokenizer, path, format=format, force=force,
                            record_sep=self.record_sep())


def _pairs(steps: Iterator[list[str]]) -> Iterator[tuple[int, str]]:
    """generate()'s per-step lists (one piece per sample, often empty) as (index, piece) pairs."""
    for pieces in steps:
        for i, piece in enumerate(pieces):
            if piece:
                yield i, piece


def _check_callable(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise ConfigError(f"{name} must be a function or None, got {type(value).__name__}")


def _check_train_args(config: Any, model: Any, **callbacks: Any) -> None:
    """train()'s arguments by type, so a mistake is one ConfigError line, not an AttributeError
    from deep inside the set-up."""
    if not isinstance(config, (TrainConfig, dict, str, os.PathLike)):
        raise ConfigError(f"train() takes a TrainConfig, a dict of options or a TOML file's path, "
                          f"got {type(config).__name__}")
    if model is not None and not isinstance(model, ModelConfig):
        raise ConfigError(f"train()'s model must be a ModelConfig or None, got {type(model).__name__} "
                          f"(model options in a dict go into the config dict)")
    for name, value in callbacks.items():
        _check_callable(name, value)


def load(path: str | Path, device: str = "auto") -> LanguageModel:
    """Load a checkpoint file or run directory (its best.pt) safely, onto device."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ConfigError(f"load() takes a checkpoint file or run directory path, got {path!r:.80}")
    if not isinstance(device, str):
        raise ConfigError(f"device must be a str such as 'auto', 'cpu' or 'cuda', got {device!r:.80}")
    dev = resolve_device(device)
    model, tokenizer, ckpt = load_model(path, dev)
    return LanguageModel(model, tokenizer, ckpt, dev, Path(path))


def train(config: TrainConfig | dict[str, Any] | str | Path, model: Optional[ModelConfig] = None,
          on_event: Optional[Callable] = None, should_stop: Optional[Callable[[], bool]] = None,
          grad_probe: Optional[Callable] = None) -> Path:
    """Train headless (nothing is printed); return the run directory.

    ``config`` is a TrainConfig (with ``model`` a ModelConfig, or None for the default shape), a
    dict of option names as on the command line (``{"corpus": "input.txt", "hidden_size": 256}``),
    or the path of a TOML file like ``charlm train --config`` reads; options given by name get the
    named model's own defaults where they set no value (``charlm.config.RECIPES``: a transformer
    is 2 x 128 at lr 5e-3), dataclasses are taken as they are. ``TrainConfig(out=RUN,
    resume=True)`` continues RUN with the options it was started with. Progress arrives as events
    through ``on_event`` when given; metrics.jsonl in the run directory records them either way.
    ``should_stop`` is polled after every step (True: save last.pt and return, as on Ctrl-C).
    ``grad_probe`` measures the chunk every ``grad_report_every`` steps: pass
    ``charlm.lab.gradients.horizon_summary`` (the product does not import the lab).
    """
    _check_train_args(config, model, on_event=on_event, should_stop=should_stop, grad_probe=grad_probe)
    if isinstance(config, TrainConfig) and not config.resume:
        launch = plan_configs(config, model)
    else:
        # Option names, as the CLI has them. A resume from a TrainConfig is the checkpoint's
        # options under the ones this config sets (a field left at its default counts as not
        # given); a ModelConfig beside a dict or a file adds the fields it sets, under theirs.
        given = config if isinstance(config, TrainConfig) else TrainConfig()
        explicit = explicit_options(given, model)
        if isinstance(config, dict):
            explicit.update(config)
        launch = plan_launch(explicit, str(config) if isinstance(config, (str, os.PathLike)) else None)
    return train_launch(launch, on_event=on_event, should_stop=should_stop, grad_probe=grad_probe)
