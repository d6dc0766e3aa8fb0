"""Training tokens/s of a GRU on the CPU: charlm's hand-written backward (charlm/cpugru.py) against
torch's own nn.GRU autograd loop, same model, same weights, same step.

One measured step is what charlm's loop does per chunk: forward, cross-entropy, backward, gradient
clipping, a fused AdamW step, the carried state detached. The two paths alternate round by round
(in turn first) so machine load hits both alike; tokens/s is the median over rounds, the ratio the
median of the per-round ratios (> 1: charlm's path trains faster). The reference is the very same
CharRNN with the CPU path switched off, which is what charlm ran before it.

    python benchmarks/gru_speed.py                    # the default model and a few other shapes
    python benchmarks/gru_speed.py --quick            # tiny shapes (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, machine, training_stepper  # noqa: E402

import charlm.model  # noqa: E402
from charlm.config import ModelConfig  # noqa: E402

VOCAB, EMBED = 66, 64
# (hidden, layers, batch, seq_len): GRU 1x256 (the default when this was measured) first,
# then wider, deeper and other chunk shapes.
SHAPES = [(256, 1, 32, 64), (256, 1, 128, 16), (512, 1, 32, 64), (256, 2, 32, 64)]


def stepper(config: ModelConfig, batch: int, seq_len: int, ours: bool):
    """One training step (benchmarks/common.py) with charlm's CPU GRU path on or off."""
    inner, _ = training_stepper(config, batch, seq_len, VOCAB)
    real = charlm.model.cpu_gru_applies

    def step() -> float:
        charlm.model.cpu_gru_applies = real if ours else (lambda rnn, x: False)
        try:
            return inner()
        finally:
            charlm.model.cpu_gru_applies = real
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes, a few steps (smoke test)")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds per path and shape")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [(16, 1, 4, 8), (16, 2, 4, 8)] if args.quick else SHAPES
    rounds, reps = (2, 1) if args.quick else (args.rounds, 3)
    print(machine())
    print("one step = forward + cross-entropy + backward + clip + fused AdamW, fp32, "
          f"embedding {EMBED}, vocabulary {VOCAB}; {reps} steps a round")
    for H, layers, B, T in shapes:
        config = ModelConfig(cell="gru", vocab_size=VOCAB, embedding_size=EMBED, hidden_size=H, layers=layers)
        ref, new = stepper(config, B, T, ours=False), stepper(config, B, T, ours=True)
        ref(), new(), ref(), new()                                       # warm-up: allocator
        rates = {"torch": [], "charlm": []}
        for i in range(rounds):  # alternate, in turn first
            order = (("torch", ref), ("charlm", new)) if i % 2 == 0 else (("charlm", new), ("torch", ref))
            for name, step in order:
                rates[name].append(reps * B * T / sum(step() for _ in range(reps)))
        a, b = statistics.median(rates["torch"]), statistics.median(rates["charlm"])
        ratio = statistics.median(n / r for n, r in zip(rates["charlm"], rates["torch"]))
        shape = f"GRU {layers}x{H}, B={B}, T={T}"
        print(f"{shape}: torch nn.GRU {a:9,.0f} tok/s | charlm cpugru {b:9,.0f} tok/s | ratio {ratio:.2f}x "
              f"(median of {rounds} rounds)", flush=True)
        append_result("gru_speed", {"shape": shape, "hidden": H, "layers": layers, "batch": B, "seq_len": T,
                                    "reference_tok_s": a, "tok_s": b, "ratio": ratio,
                                    "threads": torch.get_num_threads(), "rounds": rounds, "quick": args.quick})


if __name__ == "__main__":
    main()
