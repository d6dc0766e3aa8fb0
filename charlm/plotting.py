"""Training curves from metrics.jsonl, drawn with matplotlib (the optional `plot` extra).

One figure, four panels: loss against steps and against wall time (train chunk loss, smoothed,
and validation loss), then validation bits per character against the same two axes. Several runs
share the figure, one colour each, so runs compare at a glance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .errors import CharLMError, ConfigError, MissingExtra, RunDirError
from .metrics import scan_metrics
from .util import finite_or_none, is_finite_number


def load_curves(run_dir: str | Path) -> dict[str, Any]:
    """The series one run contributes: chunk losses and evaluations, by step and by seconds.

    Records whose step, time or loss is not a finite number (hand edits, damaged lines) are
    skipped; ``skipped`` counts them and the damaged lines of the file."""
    run_dir = Path(run_dir)
    try:
        path = run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir
        found = path.is_file()
    except OSError as e:
        raise RunDirError(f"cannot read {run_dir}: {e.strerror or e}") from None
    if not found:
        raise RunDirError(f"{run_dir} has no metrics.jsonl (give a run directory written by `charlm train`)")
    curves: dict[str, Any] = {"name": run_dir.name if run_dir.is_dir() else run_dir.parent.name,
                              "chunk": [], "eval": [], "skipped": 0}
    records, curves["skipped"] = scan_metrics(path)
    curves["model"] = next((str(r["model"]) for r in records if r.get("type") == "start" and r.get("model")), None)
    for rec in records:
        kind = rec.get("type")
        if kind not in ("chunk", "eval") or (kind == "chunk" and rec.get("skipped")):
            continue
        x = (rec.get("step"), rec.get("elapsed"), rec.get("loss" if kind == "chunk" else "val_loss"))
        if not all(is_finite_number(v) for v in x):
            curves["skipped"] += 1
        elif kind == "chunk":
            curves["chunk"].append(x)
        else:
            curves["eval"].append(x + (finite_or_none(rec.get("val_bpc")),))
    if not curves["chunk"] and not curves["eval"]:
        n = curves["skipped"]
        raise RunDirError(f"{path} holds no training records yet" + (
            f" ({n} damaged record{'s' if n > 1 else ''} skipped: a step, time or loss that is not a number)" if n else ""))
    return curves


def literal(text: str) -> str:
    """text as matplotlib draws it literally: a '$' would start mathtext (and a lone one fails)."""
    return text.replace("$", r"\$")


def _smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """TensorBoard-style exponential moving average, debiased so the first points are not pulled to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def _label(run: dict[str, Any]) -> str:
    """A run as the figure names it: its folder, and its model when metrics.jsonl says."""
    return f"{run['name']} ({run['model']})" if run.get("model") else run["name"]


FORMATS = (".png", ".svg", ".pdf")


def check_plot_path(path: str | Path, command: str, option: str = "--plot") -> Path:
    """The image file ``command`` will draw to, checked before any work: png, svg or pdf, not a
    folder, and matplotlib installed (a missing extra found after a long sweep would waste it)."""
    _matplotlib(command)
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"{option} {path}: the file name must end in .png, .svg or .pdf")
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder: give an image file name")
    return path


def new_figure(command: str, **kwargs: Any):
    """A matplotlib Figure (no pyplot: no GUI backend, no global state) for ``command`` (e.g.
    'charlm plot'), or the one message every command gives when the `plot` extra is missing."""
    return _matplotlib(command).figure.Figure(layout="constrained", **kwargs)


def _matplotlib(command: str):
    """matplotlib, or the one message every command gives when the `plot` extra is missing."""
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError:
        raise MissingExtra(f"`{command}` draws with matplotlib, an optional extra: "
                           "pip install 'charlm[plot]' (or pip install matplotlib)") from None
    return matplotlib


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Draw every run's curves into one image (png, svg or pdf, by out's suffix)."""
    fig = new_figure("charlm plot", figsize=(12, 8))
    runs = [load_curves(d) for d in run_dirs]
    axes = fig.subplots(2, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for run, colour in zip(runs, colours):
        name = literal(_label(run))
        if run["chunk"]:
            steps, secs, losses = zip(*run["chunk"])
            smooth = _smooth(losses)
            for ax, x in ((axes[0][0], steps), (axes[0][1], secs)):
                ax.plot(x, losses, color=colour, alpha=0.15, linewidth=0.8)
                ax.plot(x, smooth, color=colour, linewidth=1.2, label=f"{name} train (smoothed)")
        if run["eval"]:
            steps, secs, vals, bpcs = zip(*run["eval"])
            for ax, x in ((axes[0][0], steps), (axes[0][1], secs)):
                ax.plot(x, vals, color=colour, linestyle="--", marker="o", markersize=3, label=f"{name} val")
            points = [(s, t, b) for s, t, b in zip(steps, secs, bpcs) if is_finite_number(b)]
            if points:
                s, t, b = zip(*points)
                axes[1][0].plot(s, b, color=colour, marker="o", markersize=3, label=f"{name} val")
                axes[1][1].plot(t, b, color=colour, marker="o", markersize=3, label=f"{name} val")
    for row, ylabel in ((0, "loss (nats/token)"), (1, "validation bits per character")):
        for col, xlabel in ((0, "step"), (1, "wall time (s)")):
            ax = axes[row][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend(fontsize="small")
    fig.suptitle(literal(title or "charlm: " + ", ".join(_label(r) for r in runs)))
    return save_figure(fig, out)


def save_figure(fig, out: str | Path) -> Path:
    """Write the figure to out (png, svg or pdf, by its suffix): one line for any failure."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    except (FileExistsError, NotADirectoryError):  # a file stands where a folder must be
        raise CharLMError(f"cannot write {out}: {out.parent} is not a folder") from None
    except OSError as e:
        raise CharLMError(f"cannot write {out}: {e.strerror or e}") from None
    except ValueError as e:  # an image format matplotlib does not know
        raise CharLMError(f"cannot write {out}: {str(e).splitlines()[0] if str(e) else 'unknown format'}") from None
    finally:
        fig.clear()   # free the drawing now: a long-lived caller (the API, a test) may draw many
    return out
