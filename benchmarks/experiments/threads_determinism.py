"""Does the intra-op thread count change CPU training bit for bit? (issue 24)

Trains the same seeded model for a few steps at 1 thread and at 2 threads, in fresh processes
(the thread count is set before any work), and compares the per-chunk losses exactly.

    python benchmarks/experiments/threads_determinism.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from charlm.config import ModelConfig, TrainConfig
from charlm.training import train
import json, tempfile, pathlib
cell, hidden, steps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# Pin the count through the option where it exists (its default, auto, would choose by itself).
extra = {"threads": sys.argv[1]} if "threads" in TrainConfig.__dataclass_fields__ else {}
with tempfile.TemporaryDirectory() as d:
    cfg = TrainConfig(corpus=sys.argv[5], out=d + "/run", max_steps=steps, eval_every=10**6, sample_length=0,
                      eval_sample_length=0, device="cpu", precision="fp32", seed=0, **extra)
    train(cfg.validate(), ModelConfig(cell=cell, hidden_size=hidden).validate())
    losses = [json.loads(l)["loss"] for l in open(d + "/run/metrics.jsonl") if '"chunk"' in l]
print(json.dumps(losses))
"""


def losses(threads: int, cell: str, hidden: int, steps: int, corpus: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), cell, str(hidden), str(steps), corpus],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"))
    args = ap.parse_args()
    for cell, hidden in (("gru", 16), ("lstm", 16), ("gru", 320), ("lstm", 320)):
        a, b = losses(1, cell, hidden, args.steps, args.corpus), losses(2, cell, hidden, args.steps, args.corpus)
        first = next((i + 1 for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        print(f"{cell} 1x{hidden}: 1 vs 2 threads bit-identical for {args.steps} steps: {a == b}"
              + ("" if first is None else f" (first difference at step {first}: {a[first-1]!r} vs {b[first-1]!r}; "
                 f"step {args.steps}: {a[-1]:.6f} vs {b[-1]:.6f})"), flush=True)


if __name__ == "__main__":
    main()
