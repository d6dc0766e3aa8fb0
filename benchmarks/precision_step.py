"""bf16 autocast against fp32 on the CPU: the time of one training step of charlm's model.

Why `--precision auto` is bf16 on a CPU with native bf16: the same CharRNN, fused AdamW, clip and
detach as charlm's loop, one step in fp32 and one under CPU bf16 autocast, alternating, on random
ids; prints the median step time of each and the speed-up (the fp32 step is the reference).

    python benchmarks/precision_step.py             # 4 shapes, 30 timed steps each (~1 min)
    python benchmarks/precision_step.py --quick     # a tiny shape, a few steps (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, machine  # noqa: E402

from charlm.config import ModelConfig  # noqa: E402
from charlm.devices import cpu_has_native_bf16  # noqa: E402
from charlm.model import CharRNN  # noqa: E402

VOCAB, SEQ_LEN = 65, 64


def stepper(cell: str, hidden: int, batch: int, bf16: bool):
    """One training step of a fresh model, as a function returning its wall time in seconds."""
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell=cell, vocab_size=VOCAB, hidden_size=hidden).validate())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x, y = torch.randint(0, VOCAB, (batch, SEQ_LEN)), torch.randint(0, VOCAB, (batch, SEQ_LEN))
    box = {"state": model.init_state(batch)}

    def step() -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, state = model(x, box["state"])                          # (B, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        box["state"] = tuple(s.detach().float() for s in state)
        return time.perf_counter() - t
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny shape, a few steps (smoke test)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per precision and shape")
    args = ap.parse_args()
    print(machine())
    if not cpu_has_native_bf16():
        print("this CPU has no native bf16: --precision auto is fp32 here, nothing to compare")
        append_result("precision_step", {"bf16_available": False, "quick": args.quick})
        return
    shapes = [("gru", 32, 2)] if args.quick else [("gru", 384, 32), ("gru", 512, 32), ("lstm", 256, 64),
                                                   ("lstm", 512, 32)]
    steps = 3 if args.quick else args.steps
    for cell, hidden, batch in shapes:
        fp32, bf16 = stepper(cell, hidden, batch, False), stepper(cell, hidden, batch, True)
        for _ in range(3):  # warm-up: oneDNN sets up its kernels on the first steps
            fp32(), bf16()
        times = {"fp32": [], "bf16": []}
        for i in range(steps):  # alternate, in turn first, so both see the same machine load
            for name, step in (("fp32", fp32), ("bf16", bf16)) if i % 2 == 0 else (("bf16", bf16), ("fp32", fp32)):
                times[name].append(step())
        a, b = statistics.median(times["fp32"]), statistics.median(times["bf16"])
        name = f"{cell} 1x{hidden}, B={batch}, k={SEQ_LEN}"
        print(f"{name}: fp32 {a * 1e3:.1f} ms/step | bf16 autocast {b * 1e3:.1f} ms/step | speed-up {a / b:.2f}x "
              f"(median of {steps})", flush=True)
        append_result("precision_step", {"bf16_available": True, "model": f"{cell} 1x{hidden}", "batch": batch,
                                         "seq_len": SEQ_LEN, "fp32_ms": a * 1e3, "bf16_ms": b * 1e3,
                                         "speedup": a / b, "steps": steps, "quick": args.quick})


if __name__ == "__main__":
    main()
