"""What `charlm info` and `charlm runs` read: a checkpoint's contents, and a run directory's figures.

``checkpoint_info`` reads one checkpoint (safely, through checkpoint.load_checkpoint) and returns a
flat dict of plain values. ``run_summary`` reads a run directory cheaply: config.toml and
metrics.jsonl, and the checkpoint only when the metrics are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint, resolve_checkpoint
from .rundir import looks_like_run
from .errors import CharLMError, RunDirError
from .metrics import read_metrics
from .training.state import Progress
from .util import finite_or_none


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Everything a user asks of a checkpoint, as plain JSON-able values."""
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    m = ckpt["model_config"]
    t = ckpt["train_config"]
    tok = ckpt["tokenizer"]
    p = Progress.lenient(ckpt.get("progress"))
    corpus = ckpt.get("corpus", {})
    versions = ckpt.get("versions", {})
    best = finite_or_none(p["best_val_loss"])
    return {
        "checkpoint": str(ckpt_path),
        "model": m["cell"],
        "layers": m["layers"],
        "hidden_size": m["hidden_size"],
        "embedding_size": m["embedding_size"],
        "dropout": m["dropout"],
        "parameters": int(sum(v.numel() for v in ckpt["model"].values())),
        "tokenizer": tok.get("kind"),
        "normalize": tok.get("normalize", "none"),
        "vocab_size": m["vocab_size"],
        "step": p["step"],
        "epoch": p["epoch"],
        "tokens_seen": p["tokens_seen"],
        "elapsed_s": finite_or_none(p["elapsed"]),
        "best_val_loss": best,
        "best_val_bpc": finite_or_none(p["best_val_bpc"]) if best is not None else None,
        "corpus": corpus.get("name"),
        "corpus_sha256": corpus.get("sha256"),
        "corpus_chars": corpus.get("chars"),
        "seq_len": t.get("seq_len"),
        "batch_size": t.get("batch_size"),
        "world_size": ckpt.get("world_size", 1),
        "device": ckpt.get("device"),
        "precision": ckpt.get("precision", t.get("precision")),
        "charlm_version": versions.get("charlm"),
        "torch_version": versions.get("torch"),
        "python_version": versions.get("python"),
    }


def _read_config(run_dir: Path) -> dict[str, Any]:
    """config.toml as {key: value}, sections flattened; {} when absent or unreadable."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(run_dir / "config.toml", "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Best figures of one run directory, without loading weights when metrics.jsonl exists."""
    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    out: dict[str, Any] = {
        "run": str(run_dir), "model": None, "corpus": cfg.get("corpus") or "builtin",
        "step": None, "best_val_loss": None, "best_val_bpc": None, "best_step": None,
        "elapsed_s": None, "tokens_per_s": None, "status": "empty",
    }
    if "model" in cfg:
        out["model"] = f"{cfg['model']} {cfg.get('layers', '?')}x{cfg.get('hidden_size', '?')}"
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for rec in read_metrics(metrics):
            kind = rec.get("type")
            if kind == "start":
                out["model"] = rec.get("model", out["model"])
                out["corpus"] = rec.get("corpus", out["corpus"])
                out["status"] = "running?"  # no finish record: running now, or killed without a word
            elif kind == "chunk":
                out["step"] = rec.get("step")
                out["elapsed_s"] = finite_or_none(rec.get("elapsed"))
                out["tokens_per_s"] = finite_or_none(rec.get("tokens_per_s"))
            elif kind == "eval":
                val = finite_or_none(rec.get("val_loss"))
                if val is not None and (out["best_val_loss"] is None or val < out["best_val_loss"]):
                    out["best_val_loss"], out["best_step"] = val, rec.get("step")
                    out["best_val_bpc"] = finite_or_none(rec.get("val_bpc"))
            elif kind == "finish":
                out["status"] = rec.get("reason", "done")
                out["step"] = rec.get("step", out["step"])
                out["elapsed_s"] = finite_or_none(rec.get("elapsed")) or out["elapsed_s"]
    elif (run_dir / "last.pt").is_file():
        try:
            info = checkpoint_info(run_dir / "last.pt")
        except CharLMError:
            out["status"] = "unreadable"
            return out
        out.update(model=f"{info['model']} {info['layers']}x{info['hidden_size']}", corpus=info["corpus"],
                   step=info["step"], best_val_loss=info["best_val_loss"], best_val_bpc=info["best_val_bpc"],
                   elapsed_s=info["elapsed_s"], status="no metrics")
    return out


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under root (root itself, its children, and one level below them)."""
    root = Path(root)
    if not root.exists():
        raise RunDirError(f"{root} does not exist (runs are written to runs/ by default; "
                          f"pass the folder that holds them)")
    if not root.is_dir():
        raise RunDirError(f"{root} is not a folder")
    if looks_like_run(root):
        return [root]
    found = []
    for child in sorted(root.iterdir()):
        if looks_like_run(child):
            found.append(child)
        elif child.is_dir():
            found.extend(sorted(c for c in child.iterdir() if looks_like_run(c)))
    return found
