"""Training tokens/s of charlm's transformer against a plain loop of the same shape written here.

The reference is the textbook decoder (nanoGPT's shape): learned absolute positions, pre-LayerNorm
blocks of fused-qkv causal self-attention through F.scaled_dot_product_attention(is_causal=True)
and a GELU MLP of width 4D, a final LayerNorm and a head; no memory, no rotary positions, no
state. charlm's model adds rotary positions and (with --memory) the carried keys and values. One
measured step is what charlm's loop does per chunk: forward, cross-entropy, backward, clip 1.0,
fused AdamW (and the state detached), in the same precision and batch for both. The two alternate
round by round (in turn first), so machine load hits both alike; tokens/s is the median over
rounds, the ratio the median of the per-round ratios (> 1: charlm's step is faster).

    python benchmarks/transformer_step.py             # the shapes in SHAPES, bf16 where the CPU has it
    python benchmarks/transformer_step.py --quick     # tiny shapes (smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, load_average, machine, training_stepper  # noqa: E402

from charlm.config import ModelConfig  # noqa: E402
from charlm.devices import resolve_precision  # noqa: E402

VOCAB = 65
# (width, layers, heads, batch, window, memory): nanoGPT's shakespeare_char recipe scaled for a
# CPU (4 x 128, 4 heads, block 64, batch 12), then the same with a memory of 64, then a wider batch.
SHAPES = [(128, 4, 4, 12, 64, 0), (128, 4, 4, 12, 64, 64), (128, 4, 4, 32, 64, 0)]


class PlainBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2)
                   for t in self.qkv(self.ln1(x)).split(D, dim=-1))     # (B, h, T, d)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class PlainTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, window: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, width), nn.Embedding(window, width)
        self.blocks = nn.Sequential(*[PlainBlock(width, heads) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos(torch.arange(x.size(1)))
        return self.head(self.ln(self.blocks(h)))                       # (B, T, V)


def plain_stepper(width, layers, heads, batch, window, amp):
    torch.manual_seed(0)
    model = PlainTransformer(width, layers, heads, window)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x, y = torch.randint(0, VOCAB, (batch, window)), torch.randint(0, VOCAB, (batch, window))

    def step() -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x).float().reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return time.perf_counter() - t
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes, a few steps (smoke test)")
    ap.add_argument("--rounds", type=int, default=9, help="timed rounds per model and shape")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="auto: bf16 where the CPU has native bf16 (as charlm train chooses), else fp32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = resolve_precision(torch.device("cpu"), args.precision)
    amp = torch.bfloat16 if precision == "bf16" else None
    shapes = [(16, 2, 2, 4, 8, 0), (16, 2, 2, 4, 8, 8)] if args.quick else SHAPES
    rounds, reps = (2, 1) if args.quick else (args.rounds, 5)
    print(machine())
    print(f"one step = forward + cross-entropy + backward + clip + fused AdamW, {precision}, vocabulary "
          f"{VOCAB}; {reps} steps a round; load average before: {load_average()}")
    for D, L, H, B, W, M in shapes:
        config = ModelConfig(cell="transformer", vocab_size=VOCAB, hidden_size=D, layers=L, heads=H,
                             memory=M, window=W)
        ours, _ = training_stepper(config, B, W, VOCAB, amp)
        ref = plain_stepper(D, L, H, B, W, amp)
        ref(), ours(), ref(), ours()                                     # warm-up: allocator, kernels
        rates = {"plain": [], "charlm": []}
        for i in range(rounds):
            order = (("plain", ref), ("charlm", ours)) if i % 2 == 0 else (("charlm", ours), ("plain", ref))
            for name, step in order:
                rates[name].append(reps * B * W / sum(step() for _ in range(reps)))
        a, b = statistics.median(rates["plain"]), statistics.median(rates["charlm"])
        ratio = statistics.median(n / r for n, r in zip(rates["charlm"], rates["plain"]))
        shape = f"transformer {L}x{D}, {H} heads, B={B}, window {W}, memory {M}"
        print(f"{shape}: plain loop {a:9,.0f} tok/s | charlm {b:9,.0f} tok/s | ratio {ratio:.2f}x "
              f"(median of {rounds} rounds)", flush=True)
        append_result("transformer_step", {"shape": shape, "width": D, "layers": L, "heads": H, "batch": B,
                                           "window": W, "memory": M, "precision": precision,
                                           "reference_tok_s": a, "tok_s": b, "ratio": ratio,
                                           "threads": torch.get_num_threads(), "rounds": rounds,
                                           "load_average_after": load_average(), "quick": args.quick})


if __name__ == "__main__":
    main()
