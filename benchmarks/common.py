"""Shared helpers for the benchmark scripts: where the corpora are, what machine this is, and
one JSON line per result appended to benchmarks/results.jsonl."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results.jsonl"


def corpus_path(name: str) -> Path:
    """A corpus from ../shared/corpora (read in place, never copied into the repository)."""
    path = REPO.parent / "shared" / "corpora" / name
    if not path.exists():
        raise SystemExit(f"{path} is not present: these benchmarks read ../shared/corpora/{name}")
    return path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import torch

    return (f"machine: {os.cpu_count()} cores, {cpu_model()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.2f}")


def append_result(benchmark: str, record: dict) -> None:
    import torch

    line = {"benchmark": benchmark, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "cores": os.cpu_count(), "cpu": cpu_model(), "torch": str(torch.__version__),
            "load_average": os.getloadavg()[0], **record}
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
