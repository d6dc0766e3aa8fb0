"""Does the OpenMP wait policy help a training step under contention? (issue 24)

torch's CPU build here uses GNU OpenMP (libgomp), which reads OMP_WAIT_POLICY and GOMP_SPINCOUNT
(KMP_BLOCKTIME is Intel OpenMP's and does nothing here). Both are read when the thread pool
starts, so each setting runs in a fresh process. The step is the default recipe's shape
(GRU 1x320, batch 32, k 64, Adam), timed as tokens/s over --steps steps after 3 warm-up steps,
with 0 and 1 busy processes beside it, at 1 and 2 threads; the settings take turns, and the
figure is the median of the rounds.

    python benchmarks/experiments/omp_wait_policy.py [--steps 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from statistics import median

CHILD = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
steps = int(sys.argv[2])
torch.manual_seed(0)
emb, rnn, head = torch.nn.Embedding(65, 64), torch.nn.GRU(64, 320, batch_first=True), torch.nn.Linear(320, 65)
params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
opt = torch.optim.AdamW(params, lr=1e-3)
x, y = torch.randint(0, 65, (32, 64)), torch.randint(0, 65, (32, 64))
h = torch.zeros(1, 32, 320)
for i in range(steps + 3):
    if i == 3:
        t = time.perf_counter()
    out, h = rnn(emb(x), h)
    h = h.detach()
    loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, 65), y.reshape(-1))
    opt.zero_grad(); loss.backward(); opt.step()
print(32 * 64 * steps / (time.perf_counter() - t))
"""

SETTINGS = {"default": {}, "OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
            "OMP_WAIT_POLICY=active": {"OMP_WAIT_POLICY": "active"},
            "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"}}


def rate(threads: int, steps: int, extra: dict) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(steps)], env={**env, **extra},
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    for busy in (0, 1):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(0.5)
            for threads in map(int, args.threads.split(",")):
                got = {name: [] for name in SETTINGS}
                for _ in range(args.rounds):
                    for name, extra in SETTINGS.items():
                        got[name].append(rate(threads, args.steps, extra))
                print(f"busy {busy}, {threads} thread(s): " + ", ".join(
                    f"{name} {median(v):,.0f} tok/s" for name, v in got.items()), flush=True)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()


if __name__ == "__main__":
    main()
