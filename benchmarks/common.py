"""Shared helpers for the benchmark scripts: where the corpora are, what machine this is, and
one JSON line per result appended to benchmarks/results.jsonl."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results.jsonl"
# The scripts import charlm in-process as well as running `python -m charlm`: both should be the
# checkout's, installed or not.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def corpus_path(name: str) -> Path:
    """A corpus from ../shared/corpora (read in place, never copied into the repository)."""
    path = REPO.parent / "shared" / "corpora" / name
    if not path.exists():
        raise SystemExit(f"{path} is not present: these benchmarks read ../shared/corpora/{name}")
    return path


def cpu_model() -> str:
    """The model name, with family and model numbers (a VM may name only the vendor)."""
    try:
        info = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        if "model name" in info:
            return f"{info['model name']} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_version() -> str:
    """Without importing torch when the script has not (start-up and tokenising do not need it)."""
    if "torch" in sys.modules:
        return str(sys.modules["torch"].__version__)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def machine() -> str:
    threads = f" ({sys.modules['torch'].get_num_threads()} threads)" if "torch" in sys.modules else ""
    return (f"machine: {os.cpu_count()} cores, {cpu_model()}, torch {torch_version()}{threads}, "
            f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}")


def results_path() -> Path:
    """benchmarks/results.jsonl, or $CHARLM_BENCH_RESULTS (the smoke tests write to a temp file)."""
    return Path(os.environ.get("CHARLM_BENCH_RESULTS") or RESULTS)


def append_result(benchmark: str, record: dict) -> None:
    line = {"benchmark": benchmark, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "cores": os.cpu_count(), "cpu": cpu_model(), "torch": torch_version(),
            "load_average": os.getloadavg()[0], **record}
    with open(results_path(), "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def load_average() -> str:
    """The 1, 5 and 15 minute load, as `uptime` prints it: timings on a shared machine need it."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def training_stepper(config, batch: int, seq_len: int, vocab: int, amp=None):
    """One training step of a fresh charlm model on fixed random ids, as a function returning its
    seconds: forward, cross-entropy, backward, clip 1.0, fused AdamW, carried state detached (what
    charlm's loop does per chunk), under CPU autocast to ``amp`` (e.g. torch.bfloat16) when given.
    Returns (step, model)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from charlm.model import build_model

    torch.manual_seed(0)
    model = build_model(config.validate())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x, y = torch.randint(0, vocab, (batch, seq_len)), torch.randint(0, vocab, (batch, seq_len))
    box = {"state": model.init_state(batch)}

    def step() -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=amp) if amp is not None else contextlib.nullcontext():
            logits, state = model(x, box["state"])                       # (B, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        box["state"] = tuple(s.detach().float() for s in state)
        return time.perf_counter() - t
    return step, model
