"""What `charlm info` and `charlm runs` read: a checkpoint's contents, and a run directory's figures.

``checkpoint_info`` reads one checkpoint (safely, through checkpoint.load_checkpoint) and returns a
flat dict of plain values. ``run_summary`` reads a run directory cheaply: config.toml and
metrics.jsonl, and the checkpoint only when the metrics are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .checkpoint import read_checkpoint, resolve_checkpoint
from .errors import CharLMError, RunDirError
from .metrics import scan_metrics
from .rundir import is_run_dir, looks_like_run
from .training.state import Progress
from .util import RUN_MARKER, finite_or_none, tomllib


def _int(x: Any) -> Optional[int]:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def _str(x: Any) -> Optional[str]:
    return x if isinstance(x, str) else None


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Everything a user asks of a checkpoint, as plain JSON-able values.

    Every field but the path may be None: a checkpoint written by hand, by an older charlm, or
    edited, lacks some records or holds values of the wrong type; ``info`` shows what is there."""
    ckpt_path = resolve_checkpoint(path)
    ckpt = read_checkpoint(ckpt_path)
    m, t, tok = ckpt.model_config, _dict(ckpt.train_config), ckpt.tokenizer
    p = Progress.lenient(ckpt.progress)   # each key well typed, or None
    corpus, versions = _dict(ckpt.corpus), _dict(ckpt.versions)
    best = finite_or_none(p.get("best_val_loss"))
    dropout = m.get("dropout")
    return {
        "checkpoint": str(ckpt_path),
        "model": _str(m.get("cell")),
        "layers": _int(m.get("layers")),
        "hidden_size": _int(m.get("hidden_size")),
        "embedding_size": _int(m.get("embedding_size")),
        "heads": _int(m.get("heads")),
        "memory": _int(m.get("memory")),
        "window": _int(m.get("window")),
        "dropout": finite_or_none(dropout),
        "parameters": _parameter_count(ckpt.model, m),
        "tokenizer": _str(tok.get("kind")),
        "normalize": _str(tok.get("normalize", "none")),
        "vocab_size": _int(m.get("vocab_size")),
        "step": _int(p.get("step")),
        "epoch": _int(p.get("epoch")),
        "tokens_seen": _int(p.get("tokens_seen")),
        "elapsed_s": finite_or_none(p.get("elapsed")),
        "best_val_loss": best,
        "best_val_bpc": finite_or_none(p.get("best_val_bpc")) if best is not None else None,
        "corpus": _str(corpus.get("name")),
        "corpus_sha256": _str(corpus.get("sha256")),
        "corpus_chars": _int(corpus.get("chars")),
        "seq_len": _int(t.get("seq_len")),
        "batch_size": _int(t.get("batch_size")),
        "world_size": _int(ckpt.world_size if ckpt.world_size is not None else 1),
        "device": _str(ckpt.device),
        "precision": _str(ckpt.precision or t.get("precision")),
        "charlm_version": _str(versions.get("charlm")),
        "torch_version": _str(versions.get("torch")),
        "python_version": _str(versions.get("python")),
        "init_from": _origin(ckpt.init_from),
    }


def _parameter_count(weights: dict, model_config: dict) -> int:
    """Stored values (tensors: load_checkpoint checked), a tied output matrix counted once."""
    total = sum(v.numel() for v in weights.values())
    if model_config.get("tie_weights") is True and "head.weight" in weights:
        total -= weights["head.weight"].numel()
    return int(total)


def _origin(raw: Any) -> Optional[dict[str, Any]]:
    """A fine-tuned run's source (path, run_id, step), each well typed or None; None if not fine-tuned."""
    if not isinstance(raw, dict):
        return None
    return {"path": _str(raw.get("path")), "run_id": _str(raw.get("run_id")), "step": _int(raw.get("step"))}


def info_rows(d: dict[str, Any]) -> list[list[str]]:
    """``checkpoint_info`` as (label, text) rows for `charlm info`: '-' for whatever is missing."""
    def f(value: Any, fmt: str = "") -> str:
        if value is None:
            return "-"
        if isinstance(value, int) and not isinstance(value, bool) and not fmt:
            return f"{value:,}"
        return format(value, fmt) if fmt else str(value)

    shape = "-" if d["model"] is None else f"{d['model']} {f(d['layers'])}x{f(d['hidden_size'])}"
    if d["model"] == "transformer":   # its embedding is its width; what it sees is window + memory
        model = (f"{shape}, {f(d.get('heads'))} heads, window {f(d.get('window'))} + memory "
                 f"{f(d.get('memory') or 0)}, dropout {f(d['dropout'], 'g')}")
    else:
        model = shape if d["model"] is None else (
            f"{shape}, embedding {f(d['embedding_size'])}, dropout {f(d['dropout'], 'g')}")
    tokenizer = f(d["tokenizer"]) + (f" (normalize {d['normalize']})" if d["normalize"] not in (None, "none") else "")
    bptt = "-" if d["batch_size"] is None and d["seq_len"] is None else (
        f"{f(d['batch_size'])} streams x {f(d['seq_len'])} tokens"
        + (f" x {d['world_size']} processes" if (d["world_size"] or 1) > 1 else ""))
    origin = d.get("init_from")
    fine_tuned = [] if origin is None else [[
        "fine-tuned from", f"{f(origin['path'])}, step {f(origin['step'])}"
        + (f" (run {origin['run_id'][:12]})" if origin["run_id"] else "")]]
    return [
        ["checkpoint", d["checkpoint"]],
        *fine_tuned,
        ["model", model],
        ["parameters", f(d["parameters"])],
        ["tokenizer", f"{tokenizer}, vocabulary {f(d['vocab_size'])}"],
        ["step", f(d["step"]) + (f" (epoch {d['epoch']})" if d["epoch"] is not None else "")],
        ["tokens seen", f(d["tokens_seen"])],
        ["training time", f(d["elapsed_s"], ".0f") + (" s" if d["elapsed_s"] is not None else "")],
        ["best val loss", f(d["best_val_loss"], ".4f") + (" nats/token" if d["best_val_loss"] is not None else "")],
        ["best val bits/char", f(d["best_val_bpc"], ".4f")],
        ["corpus", f(d["corpus"]) + (f" ({f(d['corpus_chars'])} characters)" if d["corpus_chars"] is not None else "")],
        ["corpus sha256", f(d["corpus_sha256"])],
        ["BPTT", bptt],
        ["trained on", f"{f(d['device'])}, {f(d['precision'])}"],
        ["versions", f"charlm {f(d['charlm_version'])}, torch {f(d['torch_version'])}, "
                     f"python {f(d['python_version'])}"],
    ]


def _read_config(run_dir: Path) -> tuple[dict[str, Any], Optional[str]]:
    """config.toml as {key: value}, sections flattened, and a note when it exists but is unreadable."""
    path = run_dir / "config.toml"
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        return {}, None
    except OSError as e:
        return {}, f"config.toml unreadable ({e.strerror or e})"
    except (ValueError, RecursionError):  # TOMLDecodeError, or bytes that are not UTF-8
        return {}, "config.toml is not valid TOML, ignored"
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat, None


def _plain(x: Any) -> Optional[str]:
    """A value shown as text in a listing: strings and numbers only (a hand-edited record may hold
    a list or an object where a name belongs)."""
    if isinstance(x, str):
        return x
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return str(x)
    return None


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Best figures of one run directory, without loading weights when metrics.jsonl exists.

    Never fails for a damaged run: an unreadable config.toml or metrics.jsonl, or lines of it that
    are not records, are skipped, and ``notes`` says what was skipped (None when nothing was)."""
    run_dir = Path(run_dir)
    cfg, config_note = _read_config(run_dir)
    notes = [config_note] if config_note else []
    is_run = is_run_dir(run_dir)
    if not is_run:   # listed for its figures, but said to be no run: --resume and --force refuse it
        notes.append(f"not a charlm run (no {RUN_MARKER} marker)")
    out: dict[str, Any] = {
        "run": str(run_dir), "model": None, "charlm_run": is_run,
        # A run of the built-in corpus records no corpus; a folder charlm did not make says nothing.
        "corpus": _plain(cfg.get("corpus")) or ("builtin" if is_run else None),
        "step": None, "best_val_loss": None, "best_val_bpc": None, "best_step": None,
        "elapsed_s": None, "tokens_per_s": None, "status": "empty", "notes": None,
    }
    if "model" in cfg:
        out["model"] = f"{_plain(cfg['model'])} {_plain(cfg.get('layers')) or '?'}x{_plain(cfg.get('hidden_size')) or '?'}"
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        try:
            records, bad = scan_metrics(metrics)
        except RunDirError as e:
            records, bad = [], 0
            notes.append(f"metrics.jsonl unreadable ({str(e).rsplit(': ', 1)[-1]})")
        if bad:
            notes.append(f"{bad} damaged line{'s' if bad > 1 else ''} of metrics.jsonl skipped")
        _summarise_records(records, out)
    elif (run_dir / "last.pt").is_file():
        try:
            info = checkpoint_info(run_dir / "last.pt")
        except CharLMError:
            out["status"] = "unreadable"
        else:
            model = f"{info['model']} {info['layers'] or '?'}x{info['hidden_size'] or '?'}" if info["model"] else None
            out.update(model=model, corpus=info["corpus"],
                       step=info["step"], best_val_loss=info["best_val_loss"], best_val_bpc=info["best_val_bpc"],
                       elapsed_s=info["elapsed_s"], status="no metrics")
    out["notes"] = "; ".join(notes) or None
    return out


def _summarise_records(records: list[dict[str, Any]], out: dict[str, Any]) -> None:
    """Fold metrics records into a run summary; a field of the wrong type counts as absent."""
    for rec in records:
        kind = rec.get("type")
        if kind == "start":
            out["model"] = _plain(rec.get("model")) or out["model"]
            out["corpus"] = _plain(rec.get("corpus")) or out["corpus"]
            out["status"] = "running?"  # no finish record: running now, or killed without a word
        elif kind == "chunk":
            out["step"] = _int(rec.get("step"))
            out["elapsed_s"] = finite_or_none(rec.get("elapsed"))
            out["tokens_per_s"] = finite_or_none(rec.get("tokens_per_s"))
        elif kind == "eval":
            val = finite_or_none(rec.get("val_loss"))
            if val is not None and (out["best_val_loss"] is None or val < out["best_val_loss"]):
                out["best_val_loss"], out["best_step"] = val, _int(rec.get("step"))
                out["best_val_bpc"] = finite_or_none(rec.get("val_bpc"))
        elif kind == "finish":
            out["status"] = _plain(rec.get("reason")) or "done"
            out["step"] = _int(rec.get("step")) if "step" in rec else out["step"]
            out["elapsed_s"] = finite_or_none(rec.get("elapsed")) or out["elapsed_s"]


DEFAULT_RUNS = Path("runs")


def find_default_runs(here: Path = Path(".")) -> tuple[list[Path], list[str]]:
    """The runs `charlm runs` lists with no folder given: those under runs/ (where `train` puts
    them), and the immediate subfolders of ``here`` that carry charlm's run marker (a run trained
    with `--out NAME`). Returns the runs and the places looked, in words."""
    runs_dir = here / DEFAULT_RUNS
    found = find_runs(runs_dir) if runs_dir.is_dir() else []
    try:
        children = sorted(c for c in here.iterdir() if c.name != DEFAULT_RUNS.name)
    except OSError as e:
        raise RunDirError(f"cannot read {here}: {e.strerror or e}") from None
    for child in children:
        try:
            if is_run_dir(child) and child not in found:
                found.append(child)
        except OSError:   # an unreadable folder: not a run we can list
            continue
    looked = [f"{runs_dir}/" + ("" if runs_dir.is_dir() else " (absent)"),
              f"the subfolders of {'the current folder' if here == Path('.') else here} with a {RUN_MARKER} marker"]
    return found, looked


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under root (root itself, its children, and one level below them).

    A folder that cannot be listed (permission denied) is passed over, not fatal, unless it is root."""
    root = Path(root)
    try:
        if not root.exists():
            raise RunDirError(f"{root} does not exist (runs are written to runs/ by default; "
                              f"pass the folder that holds them)")
        if not root.is_dir():
            raise RunDirError(f"{root} is not a folder")
        if looks_like_run(root):
            return [root]
        children = sorted(root.iterdir())
    except OSError as e:
        raise RunDirError(f"cannot read {root}: {e.strerror or e}") from None
    found = []
    for child in children:
        try:
            if looks_like_run(child):
                found.append(child)
            elif child.is_dir():
                found.extend(sorted(c for c in child.iterdir() if looks_like_run(c)))
        except OSError:  # an unreadable folder among the runs: not one we can list
            continue
    return found
