"""Synthetic long-range corpora, and the truncation experiment: what BPTT(k) can and cannot learn.

The echo corpus. Each record is a key symbol, D - 1 random filler symbols, a cue '>', then the
key again and a newline:

    C fbjdaig> C
    A ihcjbe> A        (D = 8: the echo comes D steps after the key was read)

Everything but the echo is random (or fixed), so the echo is the one thing a model can predict
better than chance, and only by carrying the key D steps. The gradient that teaches it must flow
from the loss at the cue back D steps to the key: truncated BPTT with chunk length k <= D cuts
that path in every chunk, so the forward pass may carry the key but no update ever learns to.

The truncation grid trains tiny models {rnn, lstm, gru} x distances D x chunk lengths k with the
project's own training loop (charlm.training.train, headless, BPTT(k) exactly as `charlm train` does
it) for the same number of optimizer steps per cell (a longer chunk sees proportionally more text:
what is compared is how far one update's gradient reaches), then measures accuracy at the echo positions of a fresh
held-out echo text, against chance (1 / number of keys).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import load_model
from ..config import CELLS, check_seed
from ..errors import ConfigError, RunDirError
from ..threads import torch_threads
from .sweep import check_sweep, run_sweep

KEYS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FILLER = "abcdefghij"
CUE = ">"
SCHEMA = "charlm.truncation-table/2"


# The largest echo corpus made in memory: 64 Mi characters (generating it holds about 9 bytes
# per character for a moment). The truncation experiment needs well under a megabyte.
MAX_ECHO_CHARS = 2**26


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def echo_size(distance: int, records: int) -> int:
    """An echo corpus's length in characters, and in bytes (every character is ASCII): a record
    is its key, D - 1 fillers, the cue, the key again and a newline."""
    return records * (distance + 3)


def check_echo(distance: int, records: int, keys: int, seed: int) -> None:
    """Refuse echo settings that are wrong, or too big to make, before anything is allocated."""
    if not _whole(distance) or distance < 1:
        raise ConfigError(f"--distance must be a whole number >= 1, got {distance!r}")
    if not _whole(keys) or not 2 <= keys <= len(KEYS):
        raise ConfigError(f"--keys must be between 2 and {len(KEYS)}, got {keys!r}")
    if not _whole(records) or records < 1:
        raise ConfigError(f"--records must be a whole number >= 1, got {records!r}")
    check_seed(seed)
    size = echo_size(distance, records)
    if size > MAX_ECHO_CHARS:
        raise ConfigError(f"an echo corpus of {records:,} records x {distance + 3:,} characters is too "
                          f"big ({size:,} characters; at most {MAX_ECHO_CHARS:,}): lower --records "
                          f"or --distance")


def echo_text(distance: int, records: int = 5000, keys: int = 8, seed: int = 0) -> str:
    """The echo corpus as a string: ``records`` records with the echo ``distance`` steps after its key."""
    check_echo(distance, records, keys, seed)
    rng = np.random.default_rng(seed)
    key_ids = rng.integers(0, keys, size=records)
    fill_ids = rng.integers(0, len(FILLER), size=(records, distance - 1))
    alphabet = np.array(list(FILLER))
    lines = []
    for k, fill in zip(key_ids, fill_ids):
        key = KEYS[k]
        lines.append(f"{key}{''.join(alphabet[fill])}{CUE}{key}\n")
    return "".join(lines)


def write_echo(path: str | Path, distance: int, records: int = 5000, keys: int = 8, seed: int = 0,
               force: bool = False) -> Path:
    """Write the echo corpus to path (refusing to overwrite a file unless force)."""
    path = Path(path)
    check_echo(distance, records, keys, seed)
    tmp = path.with_name(f".echo-{os.getpid()}.tmp")
    try:
        if path.is_dir():
            raise RunDirError(f"{path} is a folder; give a file name")
        if path.exists() and not force:
            raise RunDirError(f"{path} already exists; pass --force to replace it")
        # Whole or not at all: a full disk or a kill leaves the old file (or none), never half.
        tmp.write_text(echo_text(distance, records, keys, seed), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def echo_accuracy(model, tokenizer, text: str, device="cpu", streams: int = 16) -> tuple[float, float, int]:
    """Accuracy and mean loss (nats) of predicting the echo, over every cue in text.

    The text is read statefully as ``streams`` contiguous streams (as in training), so the state
    carries across records; only the predictions made at a cue are scored.
    """
    ids = torch.from_numpy(np.asarray(tokenizer.encode(text), dtype=np.int64))
    cue = int(tokenizer.encode(CUE)[0])
    n = (len(ids) - 1) // streams * streams
    x = ids[:n].view(streams, -1).to(device)                               # (S, L)
    y = ids[1:n + 1].view(streams, -1).to(device)
    was = model.training
    model.eval()
    with torch.inference_mode():
        logits, _ = model(x)                                               # (S, L, V)
    model.train(was)
    at = x == cue
    pred = logits.argmax(-1)
    correct = int((pred[at] == y[at]).sum())
    count = int(at.sum())
    loss = float(F.cross_entropy(logits[at].float(), y[at], reduction="mean")) if count else float("nan")
    return correct / max(1, count), loss, count


@dataclass
class GridCell:
    cell: str
    distance: int
    chunk: int
    seed: int              # the seed of the corpus and the weights
    accuracy: float        # at the echo positions of the held-out text
    echo_loss: float       # nats at the echo positions (chance: ln keys)
    steps: int
    seconds: float


@dataclass
class GridResult:
    models: list[str]
    distances: list[int]
    chunks: list[int]
    keys: int
    hidden_size: int
    batch_size: int
    steps: int             # optimizer steps per cell (the same for every k)
    lr: float
    seeds: list[int]       # the whole grid is trained once per seed
    cells: list[GridCell] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def chance(self) -> float:
        return 1.0 / self.keys

    def get(self, cell: str, distance: int, chunk: int) -> list[GridCell]:
        """The cell's results, one per seed trained so far (in seed order)."""
        return [c for c in self.cells if (c.cell, c.distance, c.chunk) == (cell, distance, chunk)]

    def summary(self, cell: str, distance: int, chunk: int) -> Optional[tuple[float, float, float]]:
        """(mean, lowest, highest) echo accuracy over the seeds; None before any seed ran."""
        accs = [c.accuracy for c in self.get(cell, distance, chunk)]
        return (sum(accs) / len(accs), min(accs), max(accs)) if accs else None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["chance"] = self.chance
        d["schema"] = SCHEMA
        d["summary"] = [{"cell": m, "distance": dd, "chunk": k, "mean": s[0], "min": s[1], "max": s[2]}
                        for m in self.models for dd in self.distances for k in self.chunks
                        if (s := self.summary(m, dd, k)) is not None]
        return d


def score_cell(run_dir: str | Path, cell: str, distance: int, chunk: int, keys: int, seed: int,
               steps: int, seconds: float) -> GridCell:
    """Echo accuracy of a trained run on held-out echo text (another seed than training's)."""
    model, tokenizer, _ = load_model(Path(run_dir) / "last.pt")
    held_out = echo_text(distance, records=_held_out_records(distance), keys=keys, seed=seed + 10_000)
    acc, loss, _ = echo_accuracy(model, tokenizer, held_out)
    return GridCell(cell=cell, distance=distance, chunk=chunk, seed=seed, accuracy=acc, echo_loss=loss,
                    steps=steps, seconds=seconds)


def _records(distance: int) -> int:
    """Training records for distance D: enough for a few epochs of the budget."""
    return max(2000, 200_000 // (distance + 3))


def _held_out_records(distance: int) -> int:
    return max(400, 40_000 // (distance + 3))


def _writable_folder(folder: Path) -> Path:
    """--workdir, created if need be, after checking it can take files: one line if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise RunDirError(f"--workdir {folder} cannot take files: {e.strerror or e}") from None
    return folder


def truncation_grid(models: Sequence[str] = ("rnn", "lstm", "gru"), distances: Sequence[int] = (5, 10, 20, 40),
                    chunks: Sequence[int] = (8, 16, 32, 64), hidden_size: int = 64, batch_size: int = 64,
                    steps: int = 800, keys: int = 8, seeds: Sequence[int] = (0, 1, 2), lr: float = 1e-2,
                    workdir: Optional[str | Path] = None,
                    on_cell: Optional[Callable[[GridCell, int, int], None]] = None) -> GridResult:
    """Train and score every (model, distance, chunk) cell once per seed; on_cell(cell, done,
    total) after each. A finding is what holds across the seeds: the table shows the mean and
    the spread. Run directories go to ``workdir`` (kept) or a temporary folder (removed).
    """
    _check_grid(models, distances, chunks, hidden_size, batch_size, steps, keys, seeds, lr)
    result = GridResult(models=list(models), distances=list(distances), chunks=list(chunks), keys=keys,
                        hidden_size=hidden_size, batch_size=batch_size, steps=steps, lr=lr, seeds=list(seeds))
    t0 = time.perf_counter()
    total = len(models) * len(distances) * len(chunks) * len(seeds)
    # Tiny models: one thread is faster than two that wait on each other.
    with torch_threads(1), tempfile.TemporaryDirectory(prefix="charlm-echo-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        sweeps = [SeedSweep.of(result, folder, seed, workdir is not None) for seed in seeds]
        # Every seed's every point (sizes, memory, a kept --workdir's earlier sweep) is checked
        # before the work folder or a single echo corpus is written.
        for sweep in sweeps:
            check_sweep(sweep.axes, sweep.base, sweep.runs, sweep.words, sweep.pending())
        if workdir is not None:
            _writable_folder(folder)
        for sweep in sweeps:
            sweep.run(result, total, on_cell)
    result.seconds = time.perf_counter() - t0
    return result


def _check_grid(models, distances, chunks, hidden_size, batch_size, steps, keys, seeds, lr) -> None:
    """Every option, and every corpus the grid will write, checked before the first is written."""
    for m in models:
        if m not in CELLS:
            raise ConfigError(f"--models: unknown cell {m!r} (choose from {', '.join(CELLS)})")
    for name, values in (("--distances", distances), ("--chunks", chunks)):
        if not values or any(not _whole(v) or v < 1 for v in values):
            raise ConfigError(f"{name} must be positive whole numbers, got {list(values)}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be distinct seeds, at least one, got {list(seeds)}")
    for seed in seeds:
        check_seed(seed, "--seeds")
    for name, value in (("--steps", steps), ("--hidden-size", hidden_size), ("--batch-size", batch_size)):
        if not _whole(value) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be > 0, got {lr!r}")
    for d in distances:
        for seed in seeds:
            check_echo(d, _records(d), keys, seed)
            check_echo(d, _held_out_records(d), keys, seed + 10_000)


@dataclass
class SeedSweep:
    """One seed's grid: a sweep over echo corpora (one per D), chunk lengths and cells, with the
    same seed and step budget for every point; charlm.lab.sweep trains it (resumable with
    --workdir: a rerun skips the points that finished)."""

    seed: int
    keys: int                         # the echo corpora's key alphabet
    corpora: dict[int, Path]          # distance -> its echo corpus
    axes: dict[str, list]
    base: dict[str, Any]
    runs: Path
    words: dict[str, str]

    @classmethod
    def of(cls, result: GridResult, folder: Path, seed: int, workdir: bool) -> "SeedSweep":
        keys, steps = result.keys, result.steps
        # The name holds everything the text depends on, so a kept --workdir never reuses a
        # corpus made with other settings (the sweep would then skip its points as finished).
        corpora = {d: folder / f"echo-d{d}-keys{keys}-n{_records(d)}-seed{seed}.txt" for d in result.distances}
        axes = {"model": list(result.models), "corpus": [str(corpora[d]) for d in result.distances],
                "seq_len": list(result.chunks)}
        base = {"hidden_size": result.hidden_size, "embedding_size": 16, "batch_size": result.batch_size,
                "lr": result.lr, "warmup_steps": min(50, steps // 10), "max_steps": steps, "eval_every": steps,
                "val_fraction": 0.02, "seed": seed, "device": "cpu", "sample_length": 0}
        runs = folder / f"runs-seed{seed}"
        rerun = ("the same `charlm truncation-table` command again (same --workdir)" if workdir else
                 "`charlm truncation-table` again with --workdir DIR, which keeps the runs (these were in a "
                 "temporary folder, now removed)")
        words = {"--seq-len": "--chunks", "reduce --hidden-size, --embedding-size, --layers or the vocabulary":
                 "reduce --hidden-size",
                 f"the same `charlm sweep` command again with --out {runs}": rerun}
        return cls(seed, keys, corpora, axes, base, runs, words)

    def pending(self) -> dict[str, int]:
        """{path: size in bytes} of the echo corpora not written yet."""
        return {str(path): echo_size(d, _records(d)) for d, path in self.corpora.items() if not path.exists()}

    def run(self, result: GridResult, total: int,
            on_cell: Optional[Callable[[GridCell, int, int], None]]) -> None:
        for d, path in self.corpora.items():
            if not path.exists():
                write_echo(path, d, _records(d), self.keys, seed=self.seed)
        by_path = {str(path): d for d, path in self.corpora.items()}
        clock = {"last": time.perf_counter()}

        def score(point) -> None:
            d, k, cell = by_path[point.values["corpus"]], point.values["seq_len"], point.values["model"]
            now = time.perf_counter()
            c = score_cell(point.run_dir, cell, d, k, result.keys, self.seed, result.steps, now - clock["last"])
            clock["last"] = now
            result.cells.append(c)
            if on_cell is not None:
                on_cell(c, len(result.cells), total)

        run_sweep(self.axes, self.base, self.runs, on_point=score, words=self.words)
