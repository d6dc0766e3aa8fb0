"""Training tokens/s of minGRU (parallel scan over time) against nn.GRU at equal parameter count.

Issue 15 section 2. Both are charlm's CharRNN (vocabulary 65, embedding 64, fp32): the reference
is the default cell, a GRU, at 1x512 (trained on the CPU through charlm/cpugru.py, as charlm
trains it); minGRU is stacked --layers deep (3 by default, as in the paper;
a single minGRU layer is an elementwise leaky average of the input, and would need H ~ 4,700 to
match), with its width H chosen so that the whole model's parameter count matches the GRU's. One
measured step is what charlm's loop does per chunk: forward, cross-entropy, backward, gradient
clipping, a fused AdamW step, the carried state detached. The two models alternate round by round
(in turn first) so machine load hits both alike; tokens/s is the median over rounds, the ratio the
median of the per-round ratios (> 1: minGRU trains faster).

    python benchmarks/mincells_speed.py                 # T = 64, 256, 1024 at batch 32 (a few minutes)
    python benchmarks/mincells_speed.py --quick         # tiny shapes (smoke test)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, machine, training_stepper  # noqa: E402

from charlm.config import ModelConfig  # noqa: E402
from charlm.model import CharRNN  # noqa: E402

VOCAB, EMBED = 65, 64


def min_params(hidden: int, layers: int, gates: int = 2) -> int:
    """Parameters of a CharRNN with a min-cell stack (charlm/mincells.py), without building it:
    embedding, layer 0 (E -> gates*H), layers >= 1 (H -> gates*H, plus a LayerNorm), head."""
    H, E = hidden, EMBED
    stack = gates * (E * H + H) + (layers - 1) * (gates * (H * H + H) + 2 * H)
    return VOCAB * E + stack + H * VOCAB + VOCAB


def matching_hidden(target: int, layers: int, gates: int) -> int:
    """The width whose parameter count is closest to ``target``."""
    return min(range(8, 20_000), key=lambda h: abs(min_params(h, layers, gates) - target))


def stepper(config: ModelConfig, batch: int, seq_len: int):
    """One training step of a fresh model (benchmarks/common.py), and its parameter count."""
    step, model = training_stepper(config, batch, seq_len, VOCAB)
    return step, model.num_parameters()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes, a few steps (smoke test)")
    ap.add_argument("--lengths", default="64,256,1024", help="chunk lengths T, comma-separated")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--layers", type=int, default=3, help="minGRU layers (the GRU is 1 layer)")
    ap.add_argument("--cell", default="mingru", choices=["mingru", "minlstm"])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per model and length")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gru_hidden = 32 if args.quick else 512
    lengths = [8, 16] if args.quick else [int(v) for v in args.lengths.split(",")]
    batch, rounds = (4, 2) if args.quick else (args.batch, args.rounds)
    gru = ModelConfig(cell="gru", vocab_size=VOCAB, embedding_size=EMBED, hidden_size=gru_hidden)
    target = CharRNN(gru).num_parameters()
    gates = 2 if args.cell == "mingru" else 3
    hidden = matching_hidden(target, args.layers, gates)
    mini = ModelConfig(cell=args.cell, vocab_size=VOCAB, embedding_size=EMBED, hidden_size=hidden,
                       layers=args.layers)
    print(machine())
    print(f"gru 1x{gru_hidden} vs {args.cell} {args.layers}x{hidden} (embedding {EMBED}, vocabulary {VOCAB}), "
          f"batch {batch}, fp32, one step = forward + backward + clip + fused AdamW", flush=True)
    for T in lengths:
        # At least 16k tokens per timed round (a step at T >= 512), long enough to time on a busy machine.
        reps = max(1, (512 if not args.quick else 16) // T)
        ref, n_ref = stepper(gru, batch, T)
        new, n_new = stepper(mini, batch, T)
        if T == lengths[0]:
            print(f"parameters: gru {n_ref:,} | {args.cell} {n_new:,} ({n_new / n_ref - 1:+.2%})")
        ref(), new(), ref(), new()                                       # warm-up: allocator, oneDNN
        rates = {"gru": [], "min": []}
        for i in range(rounds):  # alternate, in turn first
            order = (("gru", ref), ("min", new)) if i % 2 == 0 else (("min", new), ("gru", ref))
            for name, step in order:
                rates[name].append(reps * batch * T / sum(step() for _ in range(reps)))
        a, b = statistics.median(rates["gru"]), statistics.median(rates["min"])
        ratio = statistics.median(m / r for m, r in zip(rates["min"], rates["gru"]))
        print(f"T={T:5d}: gru {a:9,.0f} tok/s | {args.cell} {b:9,.0f} tok/s | ratio {ratio:.2f}x "
              f"(median of {rounds} rounds, {reps} step(s) each)", flush=True)
        append_result("mincells_speed", {"cell": args.cell, "seq_len": T, "batch": batch,
                                         "reference": f"gru 1x{gru_hidden}", "reference_tok_s": a,
                                         "model": f"{args.cell} {args.layers}x{hidden}", "tok_s": b,
                                         "ratio": ratio, "parameters": n_new, "reference_parameters": n_ref,
                                         "threads": torch.get_num_threads(), "rounds": rounds,
                                         "quick": args.quick})
    assert math.isfinite(ratio)


if __name__ == "__main__":
    main()
