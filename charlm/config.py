"""Configuration as dataclasses: one place for every option, its default, and its validation.

``ModelConfig`` fixes the network's shape, ``TrainConfig`` everything about a training run,
``SampleConfig`` generation. The CLI builds these from flags (and an optional TOML file); the core
only ever sees validated dataclasses. Checkpoints store them as plain dicts (``asdict``).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError
from .threads import parse_threads
from .util import is_finite_number, tomllib

CELLS = ("lstm", "gru", "rnn", "mingru", "minlstm", "transformer")
RECURRENT = ("lstm", "gru", "rnn", "mingru", "minlstm")
# ModelConfig fields that no one sets by hand: the tokenizer gives vocab_size, --seq-len the window.
DERIVED = ("vocab_size", "window")
# A transformer built outside a run (the lab's untrained models, a hand-made config) attends this far.
DEFAULT_WINDOW = 64
# The most remembered tokens: keys and values (layers, B, M, D) are state carried every chunk.
MAX_MEMORY = 65536
TOKENIZERS = ("char", "spm-char", "bpe", "unigram")
NORMALIZATIONS = ("none", "nfc", "nfd")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
STATE_RESETS = ("epoch", "chunk")

# What a model kind starts from where an option is not given (defaults < recipe < checkpoint <
# TOML file < flags), by option name. The recurrent cells have the fields' own defaults; a
# transformer has the recipe that won a 135 s sweep on a 2-core CPU (BENCHMARKS.md, "The
# transformer recipe for 135 s"): the fields' 1x320 at lr 1e-2 trains a transformer badly.
RECIPES: dict[str, dict[str, Any]] = {
    "transformer": {"layers": 2, "hidden_size": 128, "lr": 5e-3},
}

# When a run names no stopping rule at all, it trains for this many seconds: long enough for a
# readable sample on a 2-core CPU, short enough that `charlm train` "just works".
DEFAULT_MAX_TIME = 180.0


def check_launch_options(out: object, resume: object, force: object) -> None:
    """What decides a launch's run folder, checked before the folder is looked at: --out a path
    (or None; a name that is not UTF-8 is the run folder's to refuse), --resume and --force
    switches (a TOML `resume = "no"` is not a yes)."""
    _check(out is None or isinstance(out, str), f"--out must be a path given as a str, got {type(out).__name__}")
    for option, value in (("--resume", resume), ("--force", force)):
        _check(value is None or isinstance(value, bool), f"{option} is a switch: true or false, got {value!r}")


def _check_paths(**paths: object) -> None:
    """Paths are text charlm can record: a str (or None) that is valid UTF-8. A file name of raw
    bytes (b'\\xff.txt' arrives as a lone surrogate) cannot go into config.toml, metrics.jsonl or a
    checkpoint, so it is refused before anything is created."""
    for name, value in paths.items():
        option = "corpus" if name == "corpus" else "--" + name.replace("_", "-")
        _check(value is None or isinstance(value, str),
               f"{option} must be a path given as a str, got {type(value).__name__}")
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError(f"{option} path {value!r} is not valid UTF-8 (charlm records it in "
                                  f"config.toml and checkpoints); rename the file") from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# Seeds go to torch.manual_seed (which takes up to 2**64 - 1, plus the rank under torchrun) and
# numpy's default_rng (non-negative only): one range that suits both, checked before any use.
MAX_SEED = 2**63 - 1

# The groups of `charlm train`'s options, as its --help shows them (one panel each). Each field of
# ModelConfig and TrainConfig names its group in its metadata, beside its default and docstring.
MODEL = "Model"
DATA = "Data and tokenizer"
OPTIM = "Optimisation and schedule"
BUDGET = "Budget and evaluation"
OUTPUT = "Output and logging"
DEVICES_GROUP = "Devices"
FINETUNE = "Fine-tuning"
OPTION_GROUPS = (MODEL, DATA, OPTIM, BUDGET, OUTPUT, DEVICES_GROUP, FINETUNE)


def grouped(group: str, default: Any) -> Any:
    """A dataclass field with this default, filed under an option group (its metadata)."""
    return field(default=default, metadata={"group": group})


def check_seed(value: Any, option: str = "--seed", allow_none: bool = False) -> None:
    """Refuse a seed that some generator would reject later with a traceback."""
    if value is None and allow_none:
        return
    _check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED,
           f"{option} must be a whole number from 0 to 2**63 - 1, got {value!r}")


def check_contradictions(resume: Any, force: Any, init_from: Any) -> None:
    """Options that cannot go together. Option resolution asks this before it looks for the run
    to resume, so the user hears of the contradiction, not of a missing last.pt."""
    _check(not (resume and init_from),
           "--init-from starts a new run from another run's weights; --resume continues a run "
           "that has its own: choose one")
    _check(not (resume and force), "--resume and --force contradict each other: choose one")


def _positive_int(name: str, value: Optional[int], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    _check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
           f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")


@dataclass
class ModelConfig:
    """Shape of the language model: Embedding -> RNN/LSTM/GRU/min-cell stack, or Transformer
    blocks -> Linear."""

    # GRU is the default: on tiny shakespeare it reached a lower validation loss than LSTM for
    # the same tokens and time (BENCHMARKS.md).
    cell: str = grouped(MODEL, "gru")
    """Recurrent cell: 'lstm', 'gru', 'rnn' (tanh), or 'mingru' / 'minlstm' (gates from the input
    only, trained with a parallel scan over time); or 'transformer' (causal self-attention over a
    window of --seq-len tokens, plus --memory)."""
    vocab_size: int = grouped(DATA, 0)
    """Number of token ids; set from the tokenizer, never by hand."""
    embedding_size: int = grouped(MODEL, 64)
    """Width of the input embedding (a transformer's is --hidden-size)."""
    # 320 units: on a 2-core CPU a short run is bound by tokens per second, so the width is a
    # trade of capacity against tokens seen; 320 won the 135 s sweep on tiny shakespeare (the
    # figures: benchmarks/HISTORY.md, the sweep of regularisation and model size). A longer run
    # or a faster machine can afford a wider model.
    hidden_size: int = grouped(MODEL, 320)
    """Units per recurrent layer (H); for a transformer, its width (the embedding's too)."""
    layers: int = grouped(MODEL, 1)
    """Number of stacked recurrent layers, or transformer blocks."""
    heads: int = grouped(MODEL, 4)
    """Attention heads of a transformer; --hidden-size must be a multiple of twice this number
    (rotary positions turn pairs of each head's dimensions)."""
    memory: int = grouped(MODEL, 0)
    """Transformer-XL memory: each layer's keys and values of this many previous tokens are
    carried into the next chunk (detached), so a token sees up to --seq-len + memory tokens; 0: a
    chunk is a window and nothing is carried."""
    window: int = grouped(MODEL, 0)
    """A transformer's attention window, the chunk length it trained with; set from --seq-len,
    never by hand (0 for the recurrent cells)."""
    dropout: float = grouped(MODEL, 0.0)
    """Dropout on the embedding, between layers and before the output layer (a transformer's also
    on its attention weights and residual branches); in [0, 1)."""
    weight_drop: float = grouped(MODEL, 0.0)
    """DropConnect on the hidden-to-hidden weights (AWD-LSTM's weight drop): in training, this
    fraction of them is zeroed, with one mask for every step of a chunk; in [0, 1); rnn, lstm and
    gru only."""
    tie_weights: bool = grouped(MODEL, False)
    """Use the embedding matrix as the output layer's weights too (Press & Wolf 2017); needs
    --embedding-size equal to --hidden-size."""

    def describe(self) -> str:
        """The model in a few words, as the first line of a run and its metrics.jsonl give it."""
        shape = f"{self.cell} {self.layers}x{self.hidden_size}"
        if self.cell != "transformer":
            return shape
        if self.memory:
            return f"{shape} (window {self.window or DEFAULT_WINDOW} + memory {self.memory})"
        return f"{shape} (window {self.window or DEFAULT_WINDOW}, nothing carried between chunks)"

    def validate(self) -> "ModelConfig":
        _check(self.cell in CELLS, f"--model must be one of {', '.join(CELLS)}, got {self.cell!r}")
        for name in ("embedding_size", "hidden_size", "layers", "heads"):
            _positive_int(name, getattr(self, name))
        _check(isinstance(self.memory, int) and not isinstance(self.memory, bool) and 0 <= self.memory <= MAX_MEMORY,
               f"--memory must be a whole number from 0 to {MAX_MEMORY:,}, got {self.memory!r}")
        _check(isinstance(self.window, int) and not isinstance(self.window, bool) and self.window >= 0,
               f"window must be a whole number >= 0, got {self.window!r}")
        if self.cell == "transformer":
            _check(self.hidden_size % (2 * self.heads) == 0,
                   f"--hidden-size {self.hidden_size} must be a multiple of 2 x --heads {self.heads} (each "
                   f"head takes an even share of the width for its rotary positions)")
        else:
            _check(self.memory == 0, f"--memory is a transformer's; {self.cell} carries its hidden state "
                                     f"instead (use --model transformer, or drop --memory)")
        _check(isinstance(self.vocab_size, int) and self.vocab_size >= 0,
               f"vocab_size must be >= 0, got {self.vocab_size!r}")
        _check(isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
               f"--dropout must be in [0, 1), got {self.dropout!r}")
        _check(is_finite_number(self.weight_drop) and 0.0 <= self.weight_drop < 1.0,
               f"--weight-drop must be in [0, 1), got {self.weight_drop!r}")
        _check(self.weight_drop == 0 or self.cell in ("rnn", "lstm", "gru"),
               f"--weight-drop applies to the hidden-to-hidden weights of rnn, lstm and gru; "
               f"{self.cell} has none")
        _check(isinstance(self.tie_weights, bool), f"tie_weights must be true or false, got {self.tie_weights!r}")
        _check(not self.tie_weights or self.cell == "transformer" or self.embedding_size == self.hidden_size,
               f"--tie-weights needs --embedding-size equal to --hidden-size (the output layer reads "
               f"the hidden state), got {self.embedding_size} and {self.hidden_size}")
        return self


@dataclass
class TrainConfig:
    """Everything about one training run besides the model's shape."""

    corpus: Optional[str] = grouped(DATA, None)
    """UTF-8 text file, folder of text files, or catalog name; none: the built-in corpus (Python's
    standard library source)."""
    tokenizer: str = grouped(DATA, "char")
    """'char' (Unicode code points), or a sentencepiece model: 'spm-char', 'bpe', 'unigram'."""
    vocab_size: Optional[int] = grouped(DATA, None)
    """Vocabulary size for sentencepiece tokenizers (default 2000 for bpe/unigram)."""
    min_char_count: int = grouped(DATA, 1)
    """Characters seen fewer times than this map to <unk> (char tokenizer)."""
    normalize: str = grouped(DATA, "none")
    """Unicode normalisation before tokenising: 'none', 'nfc' or 'nfd' (splits Hangul into jamo)."""
    seq_len: int = grouped(OPTIM, 64)
    """BPTT chunk length k: the gradient reaches back at most k steps."""
    batch_size: int = grouped(OPTIM, 32)
    """Number of parallel contiguous streams B (per process under torchrun)."""
    state_reset: str = grouped(OPTIM, "epoch")
    """When the carried hidden state starts again from zero: 'epoch' (at each epoch start, so the
    forward pass remembers the whole stream) or 'chunk' (every chunk, as random-window training does:
    nothing beyond k tokens is ever seen)."""
    records: bool = grouped(DATA, False)
    """The corpus is a list of records (names, titles, chat lines) separated by --record-sep: the
    state is zeroed at every record start, in training, evaluation and sampling (char tokenizer)."""
    record_sep: str = grouped(DATA, "\n")
    """The one character that separates records under --records (a newline by default)."""
    # 1e-2: the best of the learning rates tried with the 320-unit default and weight decay 0.1 in
    # the same sweep (benchmarks/HISTORY.md).
    lr: float = grouped(OPTIM, 1e-2)
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = grouped(OPTIM, 0.1)
    """The learning rate decays (cosine) to lr * min_lr_ratio at the end of the budget."""
    warmup_steps: int = grouped(OPTIM, 50)
    """Linear warm-up from 0 to lr over this many steps."""
    # 0.1: better than none in the same sweep, at 256 and at 320 units (benchmarks/HISTORY.md). It
    # applies to every parameter, as torch's AdamW does.
    weight_decay: float = grouped(OPTIM, 0.1)
    """AdamW weight decay (decoupled, on every parameter)."""
    grad_clip: float = grouped(OPTIM, 1.0)
    """Clip the global gradient norm to this value (0 disables clipping)."""
    epochs: Optional[float] = grouped(BUDGET, None)
    """Stop after this many passes over the training streams (the whole run, across resumes)."""
    max_steps: Optional[int] = grouped(BUDGET, None)
    """Stop after this many optimizer steps (the whole run, across resumes)."""
    max_time: Optional[float] = grouped(BUDGET, None)
    """Stop after this many seconds of training (the whole run, across resumes). A run that names
    no stopping rule at all trains for 180 s."""
    val_fraction: float = grouped(DATA, 0.1)
    """Fraction of the corpus (its tail, in characters) held out for validation."""
    eval_every: int = grouped(BUDGET, 500)
    """Evaluate on the validation split every this many steps."""
    eval_tokens: int = grouped(BUDGET, 32768)
    """Validation tokens scored by each evaluation during training: the same evenly spread pieces
    of the split every time, so the figures compare (0: the whole split). Bounds the cost of an
    evaluation on a large corpus; `charlm evaluate` always scores the whole split."""
    out: Optional[str] = grouped(OUTPUT, None)
    """Run directory; a fresh one under runs/ by default."""
    resume: bool = grouped(OUTPUT, False)
    """Continue the run in --out from its last.pt."""
    force: bool = grouped(OUTPUT, False)
    """Replace an existing run directory."""
    seed: int = grouped(OPTIM, 1337)
    """Seed for weights, dropout, and everything random."""
    device: str = grouped(DEVICES_GROUP, "auto")
    """'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda' or 'mps'."""
    precision: str = grouped(DEVICES_GROUP, "auto")
    """'auto' (bf16 autocast on a CPU with native bf16 instructions, else fp32), 'fp32', or autocast
    'bf16' (CUDA, or such a CPU) / 'fp16' (CUDA, loss-scaled)."""
    grad_report_every: int = grouped(BUDGET, 0)
    """Every N steps, log a gradient-through-time summary to metrics.jsonl (0: never)."""
    tensorboard: bool = grouped(OUTPUT, False)
    """Also write TensorBoard event files into the run directory."""
    max_bad_steps: int = grouped(OPTIM, 3)
    """Non-finite steps in a row before rolling back to the last good checkpoint."""
    sample_length: int = grouped(BUDGET, 300)
    """Characters of sample text printed at the end of training (0: none)."""
    init_from: Optional[str] = grouped(FINETUNE, None)
    """Fine-tune: start from this run's (or checkpoint file's) weights on the new corpus, with its
    architecture and tokenizer (a char vocabulary gains the new text's characters)."""
    eval_sample_length: int = grouped(BUDGET, 200)
    """Characters of a sample generated at every evaluation (the same seed each time), shown and
    appended to RUN/samples.txt (0: none)."""
    # On a machine that is doing something else, one thread can be 4x faster than two, and on an
    # idle one two are faster (docs/threads.md): no fixed count is right, so auto measures.
    threads: Union[str, int] = grouped(DEVICES_GROUP, "auto")
    """CPU threads: 'auto' times 1 thread against all usable CPUs (affinity and cgroup quota) early
    in a time-budgeted run and every 45 s, keeping the faster (a step-budgeted run keeps one
    count, so it is reproducible); a number pins that count. No effect on a GPU."""

    def validate(self) -> "TrainConfig":
        _check(self.tokenizer in TOKENIZERS,
               f"--tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        _check(self.normalize in NORMALIZATIONS,
               f"--normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")
        _check(self.device in DEVICES,
               f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check(self.state_reset in STATE_RESETS,
               f"--state-reset must be one of {', '.join(STATE_RESETS)}, got {self.state_reset!r}")
        _check(self.precision in PRECISIONS,
               f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("seq_len", "batch_size", "eval_every", "min_char_count", "max_bad_steps"):
            _positive_int(name, getattr(self, name))
        _positive_int("max_steps", self.max_steps, allow_none=True)
        _positive_int("vocab_size", self.vocab_size, allow_none=True)
        _check(is_finite_number(self.lr) and self.lr > 0, f"--lr must be > 0, got {self.lr!r}")
        _check(is_finite_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
               f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        _check(isinstance(self.eval_tokens, int) and not isinstance(self.eval_tokens, bool)
               and self.eval_tokens >= 0, f"--eval-tokens must be >= 0 (0: the whole split), got {self.eval_tokens!r}")
        _check(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
               f"--warmup-steps must be >= 0, got {self.warmup_steps!r}")
        _check(is_finite_number(self.weight_decay) and self.weight_decay >= 0,
               f"--weight-decay must be >= 0, got {self.weight_decay!r}")
        _check(is_finite_number(self.grad_clip) and self.grad_clip >= 0,
               f"--grad-clip must be >= 0 (0 disables clipping), got {self.grad_clip!r}")
        _check(self.epochs is None or (is_finite_number(self.epochs) and self.epochs > 0),
               f"--epochs must be > 0, got {self.epochs!r}")
        _check(self.max_time is None or (is_finite_number(self.max_time) and self.max_time > 0),
               f"--max-time must be > 0 seconds, got {self.max_time!r}")
        _check(is_finite_number(self.val_fraction) and 0 < self.val_fraction < 1,
               f"--val-fraction must be in (0, 1), got {self.val_fraction!r}")
        _check(isinstance(self.grad_report_every, int) and self.grad_report_every >= 0,
               f"--grad-report-every must be >= 0, got {self.grad_report_every!r}")
        _check(isinstance(self.sample_length, int) and 0 <= self.sample_length <= MAX_TRAIN_SAMPLE_CHARS,
               f"--sample-length must be from 0 to {MAX_TRAIN_SAMPLE_CHARS:,}, got {self.sample_length!r} "
               f"(for a longer text, `charlm sample RUN --length N` streams any length)")
        if self.tokenizer == "char" and self.vocab_size is not None:
            raise ConfigError("--vocab-size applies to sentencepiece tokenizers only "
                              "(the char tokenizer's vocabulary is the corpus's characters)")
        _check(isinstance(self.record_sep, str) and len(self.record_sep) == 1,
               f"--record-sep must be exactly one character, got {self.record_sep!r}")
        _check(not self.records or self.tokenizer == "char",
               "--records needs --tokenizer char (a sentencepiece model merges pieces across the "
               "separator, so a record boundary is not one token)")
        check_seed(self.seed)
        _check_paths(corpus=self.corpus, init_from=self.init_from)
        check_launch_options(self.out, self.resume, self.force)
        _check(isinstance(self.eval_sample_length, int) and not isinstance(self.eval_sample_length, bool)
               and 0 <= self.eval_sample_length <= MAX_TRAIN_SAMPLE_CHARS,
               f"--eval-sample-length must be from 0 (no samples) to {MAX_TRAIN_SAMPLE_CHARS:,}, got "
               f"{self.eval_sample_length!r}")
        check_contradictions(self.resume, self.force, self.init_from)
        pinned = parse_threads(self.threads)
        self.threads = "auto" if pinned is None else str(pinned)   # one spelling, for TOML and checkpoints
        return self

    def stopping_rule_given(self) -> bool:
        return any(v is not None for v in (self.epochs, self.max_steps, self.max_time))


# The longest sample a training run writes (at the end, and into samples.txt at every evaluation):
# a glimpse of the model, generated while training waits, so --sample-length 10**10 would stall the
# run for hours and grow samples.txt by gigabytes per evaluation.
MAX_TRAIN_SAMPLE_CHARS = 100_000
# The longest prime: it is run through the model at evaluation speed (a megabyte in seconds), but
# a longer one would mostly be a mistake (a whole corpus, a stream that never ends).
MAX_PRIME_CHARS = 1_000_000
# The longest text `score` shows character by character (each keeps its bits and top guesses, so
# memory grows with the text); `evaluate` gives the figures of any length.
MAX_SCORE_CHARS = 100_000


@dataclass
class SampleConfig:
    """How to generate text from a trained model."""

    prime: str = ""
    """Text to condition on before generating (default: a newline)."""
    length: int = 500
    """Characters to generate, counted as displayed: after sentencepiece decoding and NFD
    recomposition (a Hangul syllable is one character however many jamo tokens it took)."""
    temperature: float = 0.8
    """Softmax temperature (>= 0); lower is more conservative, 0 is greedy (always the most likely
    token: deterministic, no seed needed)."""
    top_k: Optional[int] = None
    """Sample only among the k most likely tokens."""
    top_p: Optional[float] = None
    """Nucleus sampling: the smallest set of tokens whose probability reaches p, in (0, 1]."""
    seed: Optional[int] = None
    """Seed for reproducible samples (same seed, same text), a whole number in [0, 2**63)."""
    num_samples: int = 1
    """Independent samples; sample i (from 0) is the one a single sample with seed + i gives."""
    beam: Optional[int] = None
    """Beam search with this many beams instead of sampling (deterministic; see charlm.sampling)."""
    stop: tuple[str, ...] = ()
    """Stop strings: a sample ends just before the first of them it produces (not included)."""
    record_sep: Optional[str] = None
    """For a model trained with --records (set from its checkpoint): each sample is one record,
    generated from a fresh state that has read this separator (a prime continues the record),
    and ending at the next separator (not included)."""

    def validate(self) -> "SampleConfig":
        _check(isinstance(self.prime, str), f"the prime must be text, got {type(self.prime).__name__}")
        _check(len(self.prime) <= MAX_PRIME_CHARS, f"the prime has {len(self.prime):,} characters, more "
               f"than the {MAX_PRIME_CHARS:,} a prime may have: give its last part")
        _check(isinstance(self.length, int) and not isinstance(self.length, bool) and self.length >= 0,
               f"--length must be >= 0, got {self.length!r}")
        _check(is_finite_number(self.temperature) and self.temperature >= 0,
               f"--temperature must be >= 0 (0 is greedy), got {self.temperature!r}")
        _positive_int("top_k", self.top_k, allow_none=True)
        _check(self.top_p is None or (is_finite_number(self.top_p) and 0 < self.top_p <= 1),
               f"--top-p must be in (0, 1], got {self.top_p!r}")
        check_seed(self.seed, allow_none=True)
        _positive_int("num_samples", self.num_samples)
        _positive_int("beam", self.beam, allow_none=True)
        _check(self.beam is None or self.num_samples == 1,
               "--beam gives the one best continuation: drop --num-samples (or sample without --beam)")
        stops = (self.stop,) if isinstance(self.stop, str) else self.stop
        _check(isinstance(stops, (tuple, list)) and all(isinstance(s, str) and s for s in stops),
               f"--stop takes non-empty strings, got {self.stop!r}")
        self.stop = tuple(stops)
        _check(self.record_sep is None or (isinstance(self.record_sep, str) and len(self.record_sep) == 1),
               f"the record separator must be one character, got {self.record_sep!r}")
        return self


# ----------------------------------------------------------------------------------------------
# TOML files: flat keys named like the long options (hidden_size = 256), or [model]/[train]
# sections. Unknown keys and wrong types are errors that name the key and the file.

# Option names that differ from the dataclass field they set.
ALIASES = {"model": "cell"}
_OPTION_OF_FIELD = {field: option for option, field in ALIASES.items()}


def option_name(field: str) -> str:
    """The option that sets a config field: 'cell' -> 'model' (ALIASES read backwards)."""
    return _OPTION_OF_FIELD.get(field, field)


def _field_types(cls) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(value: Any, typ: Any, key: str, source: str) -> Any:
    """Check a TOML value against a dataclass field type (ints are accepted for floats)."""
    allowed = get_args(typ) if get_origin(typ) is not None else (typ,)
    allowed = tuple(a for a in allowed if a is not type(None))
    base = allowed[0]
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{source}: key '{key}' must be an integer, got {value!r}")
    if not isinstance(value, allowed):   # a Union field (threads: 'auto' or 2) takes any of its types
        raise ConfigError(f"{source}: key '{key}' must be {base.__name__}, got {type(value).__name__} {value!r}")
    return value


def _unknown(name: str, known, what: str = "option") -> ConfigError:
    """"unknown option 'hiden_size' (did you mean 'hidden_size'?)": the one wording for a name
    that is not an option, whichever way it came (a dict, a flag table, a TOML file)."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown {what} '{name}'{hint}")


class _Keys(dict):
    """The table of option names; looking up a name that is not there is a ConfigError with a
    suggestion, never a bare KeyError, whoever looks it up."""

    def __missing__(self, name):
        raise _unknown(name, self)


def config_keys() -> dict[str, tuple[type, str]]:
    """Every settable key -> (dataclass, field name). vocab_size means the tokenizer's."""
    keys: dict[str, tuple[type, str]] = _Keys()
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            if cls is ModelConfig and f.name in DERIVED:
                continue
            keys[f.name] = (cls, f.name)
    for alias, target in ALIASES.items():
        keys[alias] = (ModelConfig, target)
        keys.pop(target, None)
    return keys


@dataclass(frozen=True)
class Option:
    """One training option as the command line and TOML files name it: the flag `--hidden-size`,
    the key `hidden_size`. Everything here is read from the dataclass field it sets."""

    name: str       # 'hidden_size'; 'model' sets ModelConfig.cell (ALIASES)
    owner: type     # ModelConfig or TrainConfig
    field: str      # the field's name in owner
    type: type      # int, float, str or bool (Optional[...] unwrapped)
    default: Any    # the dataclass default; None means "unset" (the run decides)
    recipes: dict   # {model: its default} where a model's recipe (RECIPES) sets another
    help: str       # the field's docstring, folded to one paragraph
    group: str      # its group in `charlm train --help` (OPTION_GROUPS), from the field's metadata


def field_help(cls: type) -> dict[str, str]:
    """{field name: its attribute docstring, whitespace folded}; {} where no source is present.

    The docstrings under each field above are the options' documentation; reading them from the
    source (rather than restating them for the CLI) keeps one copy.
    """
    if cls not in _HELP:
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        except (OSError, TypeError, SyntaxError, IndexError):
            body = []
        _HELP[cls] = {
            node.target.id: " ".join(doc.value.value.split())
            for node, doc in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)}
    return _HELP[cls]


_HELP: dict[type, dict[str, str]] = {}


def _base_type(typ: Any) -> type:
    """Optional[int] -> int."""
    args = [a for a in get_args(typ) if a is not type(None)] if get_origin(typ) is not None else [typ]
    return args[0]


def train_options() -> list[Option]:
    """Every option of `charlm train` (model fields first), in the dataclasses' field order."""
    inverse = {field_name: alias for alias, field_name in ALIASES.items()}
    options = []
    for cls in (ModelConfig, TrainConfig):
        types, docs, defaults = _field_types(cls), field_help(cls), cls()
        for f in fields(cls):
            if cls is ModelConfig and f.name in DERIVED:   # set from the tokenizer and --seq-len
                continue
            name = inverse.get(f.name, f.name) if cls is ModelConfig else f.name
            recipes = {model: recipe[name] for model, recipe in RECIPES.items() if name in recipe}
            options.append(Option(name, cls, f.name, _base_type(types[f.name]), getattr(defaults, f.name),
                                  recipes, docs.get(f.name, ""), f.metadata.get("group", OUTPUT)))
    return options


def _flatten_toml(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """The top level and the [model], [train], [data] and [optim] tables as one {key: value}.
    A key given twice (in two places, or as hidden-size and hidden_size) is refused: which one
    won would be an accident of the order, not the user's choice."""
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and key in ("model", "train", "data", "optim"):
            entries = [(sub, v, f"[{key}]") for sub, v in value.items()]
        else:
            entries = [(key, value, "the top level")]
        for sub, v, place in entries:
            name = sub.replace("-", "_")
            if name in where:
                raise ConfigError(f"{source}: '{sub}' is set twice (in {where[name]} and in {place}); "
                                  f"keep one")
            where[name] = place
            flat[sub] = v
    return flat


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file into {option_name: value}, validating names and types."""
    path = Path(path)
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {source} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {source}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:  # a binary file, or text in another encoding
        raise ConfigError(f"{source} is not a UTF-8 TOML file (bad byte at offset {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML: {e}") from None
    flat = _flatten_toml(raw, source)
    keys = config_keys()
    types = {**_field_types(ModelConfig), **_field_types(TrainConfig)}
    out: dict[str, Any] = {}
    for key, value in flat.items():
        name = key.replace("-", "_")
        if name not in keys:
            close = difflib.get_close_matches(name, keys, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"{source}: unknown key '{key}' ({hint}known keys: {', '.join(sorted(keys))})")
        _, field_name = keys[name]
        out[name] = _coerce(value, types[field_name], key, source)
    return out


def split_options(options: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Build validated configs from {option_name: value} (CLI flags merged over a TOML file), over
    the recipe of the model they name (``RECIPES``) and the fields' defaults."""
    keys = config_keys()
    model_kw: dict[str, Any] = {}
    train_kw: dict[str, Any] = {}
    for name, value in {**RECIPES.get(options.get("model"), {}), **options}.items():
        cls, field_name = keys[name]    # an unknown name: ConfigError "did you mean ..."
        (model_kw if cls is ModelConfig else train_kw)[field_name] = value
    return ModelConfig(**model_kw).validate(), TrainConfig(**train_kw).validate()


def to_toml(model: ModelConfig, train: TrainConfig) -> str:
    """Render resolved configs as a TOML file that load_toml reads back (None values omitted)."""
    lines = ["# charlm resolved configuration", "", "[model]"]
    inverse = {v: k for k, v in ALIASES.items()}
    for f in fields(model):
        if f.name in DERIVED:
            continue
        lines.append(f"{inverse.get(f.name, f.name)} = {_toml_value(getattr(model, f.name))}")
    lines += ["", "[train]"]
    for f in fields(train):
        value = getattr(train, f.name)
        if value is None:
            lines.append(f"# {f.name} = (unset)")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    # A TOML basic string takes JSON's escapes, so a newline --record-sep stays on one line.
    return json.dumps(str(value), ensure_ascii=False)
