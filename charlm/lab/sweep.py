"""`charlm sweep`: the same training run across a grid of options, as one table.

A sweep is a folder holding ``sweep.json`` (the grid and the options every run shares) and one run
directory per grid point, named after its values (``seq_len=16,model=lstm``). Every point trains
with the same seed and the same budget (``max_steps``, ``max_time`` or ``epochs``, required), one
after another. A rerun of the same sweep skips the points that finished and resumes one that was
cut short, so a sweep survives Ctrl-C and crashes as a single run does.

The figures of a point come from its metrics.jsonl: the last and the best validation loss (nats per
token) and bits per character, tokens per second over the run, and, when asked, its gradient
horizon (as inspect-gradients measures it) and effective context (as inspect-context does).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, get_args, get_origin, get_type_hints

from ..api import load
from ..config import ModelConfig, TrainConfig, config_keys
from ..corpus.text import Corpus
from ..devices import check_precision, resolve_device
from ..errors import CharLMError, ConfigError, CorpusError, Interrupted, RunDirError
from ..events import Event, Notice
from ..limits import check_model_fits
from ..metrics import read_metrics
from ..plotting import literal, new_figure, save_figure
from ..training import plan_launch, resolve_options, train_launch
from ..util import is_finite_number, json_safe
from .context import study as context_study
from .gradients import horizon_summary

SCHEMA = "charlm.sweep/1"
MANIFEST = "sweep.json"
# Options that belong to the sweep itself, not to one of its runs.
NOT_AN_AXIS = ("out", "resume", "force")
MAX_POINTS = 1000   # runs in one sweep: each is a whole training run
FINISHED = ("max_steps", "max_time", "epochs")


@dataclass
class SweepPointStarted(Event):
    """A grid point starts (or resumes) training; its run's own events follow."""

    kind = "sweep_point"
    index: int          # 1-based
    total: int
    name: str
    values: dict[str, Any]
    resumed: bool


@dataclass
class PointResult:
    """One grid point: its values, where it ran, and its figures (None where not measured)."""

    name: str
    values: dict[str, Any]
    run_dir: str
    status: str = "pending"                 # done | trained | pending
    steps: Optional[int] = None
    elapsed_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    final_val_loss: Optional[float] = None
    final_val_bpc: Optional[float] = None
    best_val_loss: Optional[float] = None
    best_val_bpc: Optional[float] = None
    gradient_horizon: Optional[int] = None  # lags; None: not measured, or beyond the lags measured
    effective_context: Optional[int] = None


@dataclass
class SweepResult:
    folder: str
    axes: dict[str, list[Any]]
    base: dict[str, Any]
    points: list[PointResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return json_safe({"schema": SCHEMA, "folder": self.folder, "axes": self.axes, "base": self.base,
                          "points": [asdict(p) for p in self.points]})


# ----------------------------------------------------------------------------------------------
# The grid: "--grid seq_len=8,16,32" -> {"seq_len": [8, 16, 32]}, typed like the option


def _option_types() -> dict[str, Any]:
    hints = {**get_type_hints(ModelConfig), **get_type_hints(TrainConfig)}
    return {name: hints[field_name] for name, (_, field_name) in config_keys().items()}


def _parse_value(text: str, typ: Any, axis: str) -> Any:
    allowed = [a for a in (get_args(typ) if get_origin(typ) is not None else (typ,)) if a is not type(None)]
    base = allowed[0]
    try:
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return base(text)
    except ValueError:
        raise ConfigError(f"--grid {axis}: {text!r} is not a valid {base.__name__}") from None


def parse_grid(specs: list[str]) -> dict[str, list[Any]]:
    """Each spec "name=v1,v2,..." becomes an axis; names as the long options (with - or _)."""
    if not specs:
        raise ConfigError("a sweep needs at least one --grid NAME=V1,V2,... axis")
    types = _option_types()
    axes: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not sep or not name or not values.strip():
            raise ConfigError(f"--grid takes NAME=V1,V2,... (e.g. seq_len=16,32), got {spec!r}")
        if name in NOT_AN_AXIS or name not in types:
            known = ", ".join(sorted(k for k in types if k not in NOT_AN_AXIS))
            raise ConfigError(f"--grid {name}: not a train option that can vary (options: {known})")
        if name in axes:
            raise ConfigError(f"--grid {name} is given twice; put all its values in one --grid")
        parsed = [_parse_value(v.strip(), types[name], name) for v in values.split(",") if v.strip()]
        if not parsed:   # "seq_len=," would make a grid of zero points and an empty table
            raise ConfigError(f"--grid {name} has no values; give at least one (e.g. {name}=V1,V2)")
        if len(set(map(repr, parsed))) != len(parsed):
            raise ConfigError(f"--grid {name} repeats a value: {values}")
        axes[name] = parsed
    return axes


def point_name(values: dict[str, Any]) -> str:
    """A folder name that says the point's values: "seq_len=16,model=lstm"."""
    def short(axis: str, value: Any) -> str:
        text = Path(str(value)).stem if axis == "corpus" else f"{value:g}" if isinstance(value, float) else str(value)
        return re.sub(r"[^A-Za-z0-9._+-]", "_", text)[:40]
    return ",".join(f"{axis}={short(axis, v)}" for axis, v in values.items())


def grid_points(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, the last axis varying fastest; refused before any is built when there
    are more than MAX_POINTS (a typed 300x300x300 grid would be 27 million runs)."""
    count = math.prod(len(values) for values in axes.values())
    if count > MAX_POINTS:
        sizes = " x ".join(f"{len(v)} {name}" for name, v in axes.items())
        raise ConfigError(f"the grid has {count:,} points ({sizes}), more than the {MAX_POINTS:,} a sweep "
                          f"may run; give fewer values")
    names = list(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]


# ----------------------------------------------------------------------------------------------
# Planning: validate every point before anything is written


def _check_base(base: dict[str, Any], axes: dict[str, list[Any]]) -> None:
    for key in NOT_AN_AXIS:
        if base.get(key):
            raise ConfigError(f"--{key} is the sweep's own business: give the sweep folder as --out")
    # A budget may be an axis (--grid max_steps=100,200): every point then has one of its own.
    if not any(base.get(k) is not None or k in axes for k in FINISHED):
        raise ConfigError("a sweep needs a budget for every run: --max-steps, --max-time or --epochs")


def _check_manifest(folder: Path, axes: dict[str, list[Any]], base: dict[str, Any]) -> None:
    """A rerun must be the same sweep (its grid may grow); a folder of something else is refused."""
    manifest = folder / MANIFEST
    if not folder.exists():
        return
    if not folder.is_dir():
        raise RunDirError(f"sweep folder {folder} is a file; choose another --out")
    if not manifest.is_file():
        if any(folder.iterdir()):
            raise RunDirError(f"{folder} exists and is not a charlm sweep (no {MANIFEST}); choose another --out")
        return
    try:
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        saved_base = saved["base"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunDirError(f"{manifest} is unreadable ({e}); choose another --out") from None
    if not isinstance(saved_base, dict):
        raise RunDirError(f"{manifest} is not a charlm sweep's manifest (its base is not a table of "
                          "options); choose another --out")
    if saved_base != json_safe(base):
        differ = sorted(k for k in set(saved_base) | set(base) if saved_base.get(k) != base.get(k))
        raise RunDirError(f"{folder} holds a sweep with other options (they differ in: "
                          f"{', '.join(differ)}); rerun it with the same options or choose another --out")


def plan(axes: dict[str, list[Any]], base: dict[str, Any], folder: Path,
         pending: Optional[dict[str, int]] = None) -> list[tuple[PointResult, dict]]:
    """Each point with its full option dict, validated (configs built) before any run starts.
    ``pending``: {corpus path: its size in bytes} for corpora a command built on the sweep writes
    only once the plan has passed (truncation-table's echo corpora, made from their names)."""

    _check_base(base, axes)
    _check_manifest(folder, axes, base)
    planned, configs = [], []
    for values in grid_points(axes):
        name = point_name(values)
        options = {**base, **values, "out": str(folder / name)}
        # raises ConfigError for a bad combination, before any run
        configs.append(resolve_options(dict(options)))
        planned.append((PointResult(name=name, values=values, run_dir=str(folder / name)), options))
    names = [p.name for p, _ in planned]
    if len(set(names)) != len(names):
        raise ConfigError("two grid points would share a folder name; make the values distinct")
    _preflight([p for p, _ in planned], configs, pending or {})
    return planned


def check_sweep(axes: dict[str, list[Any]], base: dict[str, Any], folder: str | Path,
                words: Optional[dict[str, str]] = None, pending: Optional[dict[str, int]] = None) -> None:
    """What ``run_sweep`` would refuse, said (in the words of the command built on it) without
    writing anything: a command that runs several sweeps checks them all before the first."""
    try:
        plan(axes, base, Path(folder), pending)
    except CharLMError as e:
        raise _reworded(e, words) from None


def _preflight(points: list[PointResult], configs: list[tuple[ModelConfig, TrainConfig]],
               pending: dict[str, int]) -> None:
    """What a point's own launch refuses, checked for every point before the first one trains, so a
    sweep does not fail at its last point after hours: the device (--grid device=cpu,cuda on a
    machine without CUDA), a chunk the corpus cannot fill, and a model the memory cannot hold. The
    corpus is not encoded here (that is each run's work): its size in bytes bounds its tokens, so
    only a point that certainly fails is refused; a borderline one is still refused by its launch.
    The error names the point."""
    bounds: dict[Any, tuple[str, int]] = {}
    digests: dict[Any, str] = {}
    for point, (model_config, config) in zip(points, configs):
        _check_same_corpus(point, config, digests, pending)
        try:
            device = resolve_device(config.device)
            if device.type != "cuda":       # a GPU's precision is asked by its own launch (training/setup._precision)
                check_precision(device, config.precision)
            key = (config.corpus, config.tokenizer, config.normalize)
            if key not in bounds:
                bounds[key] = _token_bound(config, pending)
            corpus_name, most = bounds[key]
            need = config.batch_size * (config.seq_len + 1)
            if need > most:
                raise CorpusError(f"corpus {corpus_name} has at most {most:,} tokens, too few for "
                                  f"{config.batch_size} streams of --seq-len {config.seq_len} (needs at "
                                  f"least {need:,}); lower --batch-size or --seq-len")
            # The vocabulary is not known yet: one token is the least it can be.
            check_model_fits(model_config or ModelConfig(), 1, device, config.batch_size, config.seq_len)
        except CharLMError as e:
            raise type(e)(f"grid point {point.name}: {e}; nothing was trained") from None


def _check_same_corpus(point: PointResult, config: TrainConfig, digests: dict[Any, str],
                       pending: dict[str, int]) -> None:
    """A point trained before (finished, to be skipped, or cut short, to be resumed) must have read
    the corpus as it is now: a finished point is otherwise skipped and its figures, from another
    text, sit in the table beside points trained on this one. Its data/meta.json records the
    sha256 of the text it encoded; the corpus is hashed only when such a point exists."""
    try:
        recorded = json.loads((Path(point.run_dir) / "data" / "meta.json").read_text(encoding="utf-8"))["key"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return       # not trained yet (or not by charlm): its own launch decides
    if config.corpus in pending:
        return       # to be written again from its name, the very text the point read
    if config.corpus not in digests:
        digest = hashlib.sha256()
        for _ in Corpus.resolve(config.corpus).blocks(digest):
            pass
        digests[config.corpus] = digest.hexdigest()
    if recorded != digests[config.corpus]:
        raise RunDirError(f"grid point {point.name} was trained on another version of its corpus "
                          f"{config.corpus or 'builtin'} (the sha256 in {point.run_dir}/data/meta.json "
                          f"differs), so its figures would not compare; choose another --out, or remove "
                          f"that point's folder to train it again; nothing was trained")


def _token_bound(config: TrainConfig, pending: dict[str, int]) -> tuple[str, int]:
    """(the corpus's name, the most tokens it can encode to) without reading it: one per byte for
    characters as they are or composed (a UTF-8 character is at least one byte); three per byte where
    decomposition (nfd, nfkd) or sentencepiece's byte fallback and space marks can add tokens.
    A pending corpus (not written yet) has the size its writer gave."""
    per_byte = 1 if config.tokenizer == "char" and config.normalize in ("none", "nfc") else 3
    if config.corpus in pending:
        return Path(config.corpus).name, pending[config.corpus] * per_byte
    corpus = Corpus.resolve(config.corpus)
    size = 0
    for path in corpus.files:
        try:
            size += path.stat().st_size
        except OSError as e:
            raise CorpusError(f"cannot read {path}: {e.strerror or e}") from None
    return corpus.name, size * per_byte


# ----------------------------------------------------------------------------------------------
# Running


def _read_figures(point: PointResult) -> bool:
    """Fill point's figures from its metrics.jsonl; True when the run finished its budget."""
    path = Path(point.run_dir) / "metrics.jsonl"
    if not path.is_file():
        return False
    finished = False
    for rec in read_metrics(path):
        kind = rec.get("type")
        if kind == "eval" and isinstance(rec.get("val_loss"), (int, float)):
            point.final_val_loss, point.final_val_bpc = rec["val_loss"], rec.get("val_bpc")
            if point.best_val_loss is None or rec["val_loss"] < point.best_val_loss:
                point.best_val_loss, point.best_val_bpc = rec["val_loss"], rec.get("val_bpc")
        elif kind == "chunk" and isinstance(rec.get("elapsed"), (int, float)) and rec["elapsed"] > 0:
            point.steps, point.elapsed_s = rec.get("step"), rec["elapsed"]
            tokens = rec.get("tokens")
            point.tokens_per_s = tokens / rec["elapsed"] if isinstance(tokens, (int, float)) else None
        elif kind == "finish":
            finished = rec.get("reason") in FINISHED
        elif kind == "start":
            finished = False   # a resumed launch: only its own finish counts
    return finished


def _train_point(options: dict[str, Any], resume: bool, on_event: Callable[[Event], None]) -> None:
    launch = plan_launch({**options, "resume": resume or None})
    train_launch(launch, on_event=on_event,
                 grad_probe=horizon_summary if launch.config.grad_report_every else None)


def _inspect_point(point: PointResult, emit: Callable[[Event], None]) -> None:
    """Effective context and gradient horizon of the point's best model, as inspect-context
    measures them (the horizon as inspect-gradients does, the longest over layers and states)."""
    try:
        study = context_study(load(point.run_dir, device="cpu"), threads=1)
    except CharLMError as e:   # e.g. a validation text too short for 2,048 tokens of history
        emit(Notice(f"{point.name}: not inspected: {e}", level="warning"))
        return
    point.gradient_horizon, point.effective_context = study.gradient_horizon, study.effective_context


def run_sweep(axes: dict[str, list[Any]], base: dict[str, Any], folder: str | Path,
              on_event: Optional[Callable[[Event], None]] = None, inspect: bool = False,
              on_point: Optional[Callable[[PointResult], None]] = None,
              words: Optional[dict[str, str]] = None) -> SweepResult:
    """Train every grid point not finished yet (in order), then gather the figures of all.

    ``on_point(point)`` is called after each point is trained (or found finished): a measurement
    of one's own (truncation-table scores echo accuracy there). ``words`` rewrites the sweep's own
    words in its errors for a command built on it (truncation-table: --seq-len is its --chunks, and
    the advice after Ctrl-C is to rerun that command): {sweep's phrase: the command's}."""
    folder = Path(folder)
    emit = on_event or (lambda e: None)
    try:
        planned = plan(axes, base, folder)
    except CharLMError as e:
        raise _reworded(e, words) from None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps({"schema": SCHEMA, "axes": json_safe(axes),
                                               "base": json_safe(base)}, indent=1) + "\n", encoding="utf-8")
    result = SweepResult(folder=str(folder), axes=axes, base=base)
    for index, (point, options) in enumerate(planned, start=1):
        if _read_figures(point):
            point.status = "done"
            emit(Notice(f"[{index}/{len(planned)}] {point.name}: finished before, skipped"))
        else:
            resume = (Path(point.run_dir) / "last.pt").is_file()
            emit(SweepPointStarted(index, len(planned), point.name, point.values, resume))
            try:
                _train_point(options, resume, emit)
            except Interrupted as e:
                # The run's own advice (`charlm train --out POINT --resume`) would finish this point
                # only: the sweep command resumes it and then trains the points after it.
                saved = str(e).partition("; continue with")[0]
                err = Interrupted(f"{saved} (point {index}/{len(planned)}); to go on with the sweep, run "
                                  f"the same `charlm sweep` command again with --out {folder}: finished "
                                  f"points are skipped and this one resumes")
                err.exit_code = e.exit_code
                raise _reworded(err, words) from None
            _read_figures(point)
            point.status = "trained"
        if inspect:
            _inspect_point(point, emit)
        if on_point is not None:
            on_point(point)
        result.points.append(point)
    return result


def _reworded(error: CharLMError, words: Optional[dict[str, str]]) -> CharLMError:
    """``error`` with each phrase of ``words`` replaced (see run_sweep), as the same kind of error."""
    if not words:
        return error
    message = str(error)
    for sweep_phrase, own in words.items():
        message = message.replace(sweep_phrase, own)
    reworded = type(error)(message)
    reworded.exit_code = error.exit_code
    return reworded


def plot_sweep(result, out: str | Path) -> Path:
    """The best validation loss against each grid axis: one panel per axis, one line per
    combination of the other axes' values (a SweepResult)."""
    axes_names = list(result.axes)
    fig = new_figure("charlm sweep --plot", figsize=(5.5 * len(axes_names), 4.2))
    panels = fig.subplots(1, len(axes_names), squeeze=False)[0]
    for ax, name in zip(panels, axes_names):
        values = result.axes[name]
        others = [a for a in axes_names if a != name]
        series: dict[tuple, list[tuple[int, float]]] = {}
        for p in result.points:
            if is_finite_number(p.best_val_loss):
                key = tuple(p.values[a] for a in others)
                series.setdefault(key, []).append((values.index(p.values[name]), p.best_val_loss))
        order = lambda key: [result.axes[a].index(v) for a, v in zip(others, key)]   # the grid's own order
        for key, pts in sorted(series.items(), key=lambda kv: order(kv[0])):
            pts.sort()
            label = ", ".join(f"{a}={v}" for a, v in zip(others, key)) or "best val"
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=literal(label))
        ax.set_xticks(range(len(values)), [literal(str(v)) for v in values])
        ax.set_xlabel(literal(name))
        ax.set_ylabel("best validation loss (nats/token)")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle(literal(f"charlm sweep {result.folder}"))
    return save_figure(fig, out)
