"""Training tokens/s beside 0, 1 and 2 busy processes, at --threads 1, 2 and auto (issue 24).

Each cell is one `python -m charlm train` of the checkout's charlm, default recipe (GRU 1x320,
batch 32, k 64) on tiny shakespeare, with a time budget (auto measures only in time-budgeted
runs, docs/threads.md). The busy processes are `python -c "while True: pass"` children started
before the row and killed after it. The figure is the tokens/s between the end of step
--skip-steps and the last step, from the run's metrics.jsonl; evaluations are kept small
(--eval-tokens 4096) but stay in the window, alike for every column. Prints one table with the
load average at the start of each row, and appends one JSON line.

    python benchmarks/threads_contention.py                    # 45 s per cell, 9 cells (~8 min)
    python benchmarks/threads_contention.py --seconds 20       # quicker
    python benchmarks/threads_contention.py --quick            # a few seconds per cell (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, append_result, machine  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def train_rate(threads: str, seconds: float, skip: int, folder: Path) -> tuple[Optional[float], list[str]]:
    """tokens/s after step ``skip`` of one run (None: it ran too few steps), and its thread notices."""
    out = folder / f"run-{threads}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "charlm", "--quiet", "train", str(CORPUS), "--out", str(out),
           "--max-time", str(seconds), "--threads", threads, "--sample-length", "0",
           "--eval-sample-length", "0", "--eval-tokens", "4096"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}   # the checkout's charlm, installed or not
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    chunks = [e for e in events if e["type"] == "chunk"]
    notes = [e["message"] for e in events if e["type"] == "notice" and "threads" in e["message"]]
    if len(chunks) <= max(skip, 1):
        return None, notes
    first, last = chunks[max(skip, 1) - 1], chunks[-1]
    return (last["tokens"] - first["tokens"]) / max(last["elapsed"] - first["elapsed"], 1e-9), notes


def busy_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        p.kill()
    for p in processes:
        p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=45.0, help="training time budget of each cell")
    ap.add_argument("--skip-steps", type=int, default=5, help="steps left out of the rate (start-up)")
    ap.add_argument("--busy", default="0,1,2", help="numbers of busy processes, comma-separated")
    ap.add_argument("--threads", default="1,2,auto", help="--threads values, comma-separated")
    ap.add_argument("--quick", action="store_true", help="4 s cells, 0 and 1 busy, 1 and auto, after step 1 (smoke test)")
    args = ap.parse_args()
    if not CORPUS.exists():
        print(f"skipped: {CORPUS} is not present (this benchmark reads ../shared/corpora/tinyshakespeare.txt)")
        return
    seconds, busy, skip = (4.0, "0,1", 1) if args.quick else (args.seconds, args.busy, args.skip_steps)
    counts = [int(b) for b in busy.split(",")]
    settings = ["1", "auto"] if args.quick else args.threads.split(",")
    print(machine())
    rows, notes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            hogs = busy_processes(n)
            try:
                time.sleep(1.0)   # let them start spinning
                load = os.getloadavg()[0]
                rates = {}
                for t in settings:
                    rates[t], notes[f"{n}/{t}"] = train_rate(t, seconds, skip, Path(tmp))
                rows[n] = (load, rates)
            finally:
                stop(hogs)
    print(f"\ntokens/s, GRU 1x320 default recipe, {seconds:g} s per run, after step {skip} (-: too few steps)")
    print(f"{'busy':>4}  {'load':>5}  " + "  ".join(f"{'--threads ' + t:>16}" for t in settings))
    for n, (load, rates) in rows.items():
        print(f"{n:>4}  {load:>5.2f}  " + "  ".join(f"{'-' if rates[t] is None else format(rates[t], ',.0f'):>16}" for t in settings))
    for key, messages in notes.items():
        if key.endswith("/auto"):
            print(f"busy {key.split('/')[0]}, auto: " + "; ".join(messages))
    append_result("threads_contention", {
        "seconds": seconds, "skip_steps": skip, "quick": args.quick,
        "tokens_per_s": {str(n): rates for n, (_, rates) in rows.items()},
        "load_average_per_row": {str(n): load for n, (load, _) in rows.items()}, "auto_notices": notes})


if __name__ == "__main__":
    main()
