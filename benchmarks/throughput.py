"""Training throughput: charlm's whole loop against a plain reference loop, same process, alternating.

charlm's figure is tokens / wall time of `charlm.training.train` (data, per-chunk events, the plain
display, metrics.jsonl, evaluation and checkpoint cadence at their defaults all included). The
reference is the PyTorch word_language_model way written here: Embedding + nn.LSTM + Linear,
Adam, clip, detach, at the same shapes, on the same ids. Both are timed from the end of their
second step (the first steps set up oneDNN's kernels) to the end of the last; charlm's window holds
the evaluation and checkpoints its default cadence puts there (step 500 of 600 at 1x256), and
the end-of-run evaluation and save, a one-time cost like start-up, is printed apart. The ratio
is the median of per-round ratios, the two loops taking turns to go first. Also reports model
FLOP utilisation against this machine's measured matrix-multiply rate.

The pair runs in fp32 (the like-for-like comparison the target is about). On a CPU with native
bf16, where charlm's default precision ('auto') is bf16 autocast, a second pair runs both loops
under the same bf16 autocast.

    python benchmarks/throughput.py                 # LSTM 1x256 and 2x512, fp32 and bf16, 2 rounds (~10 min)
    python benchmarks/throughput.py --quick         # a few seconds, for the smoke test
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, corpus_path, machine  # noqa: E402

from charlm.config import ModelConfig, TrainConfig  # noqa: E402
from charlm.devices import cpu_has_native_bf16  # noqa: E402
from charlm.training import train  # noqa: E402


def matmul_flops(n: int = 1024, repeat: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """This machine's matrix-multiply rate (FLOP/s) in ``dtype``, best of a few rounds."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeat):
            torch.mm(a, b)
        best = max(best, 2 * n ** 3 * repeat / (time.perf_counter() - t))
    return best


def flops_per_token(vocab: int, emb: int, hidden: int, layers: int) -> float:
    """Matmul FLOPs per trained token: forward 2*(4H*(in+H)) per layer + 2*H*V head, x3 for backward."""
    fwd = sum(2 * 4 * hidden * ((emb if i == 0 else hidden) + hidden) for i in range(layers))
    fwd += 2 * hidden * vocab
    return 3 * fwd


def reference_loop(ids: np.ndarray, vocab: int, emb: int, hidden: int, layers: int, batch: int,
                   seq_len: int, steps: int, bf16: bool = False) -> float:
    """word_language_model-style TBPTT loop (under CPU bf16 autocast if asked); returns tokens/s."""
    torch.manual_seed(0)
    embed, rnn, head = nn.Embedding(vocab, emb), nn.LSTM(emb, hidden, layers, batch_first=True), nn.Linear(hidden, vocab)
    params = [*embed.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    L = len(ids) // batch
    data = torch.from_numpy(ids[: batch * L].astype(np.int64)).view(batch, L)
    state = None
    t0 = None
    for i in range(steps):
        if i == 2:
            t0 = time.perf_counter()  # timed from the end of the second step
        j = (i * seq_len) % (L - seq_len - 1)
        x, y = data[:, j:j + seq_len], data[:, j + 1:j + 1 + seq_len]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out, state = rnn(embed(x), state)
            loss = F.cross_entropy(head(out).float().reshape(-1, vocab), y.reshape(-1))
        state = tuple(s.detach().float() for s in state)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss.item()
    return batch * seq_len * (steps - 2) / (time.perf_counter() - t0)


def charlm_loop(corpus: Path, emb: int, hidden: int, layers: int, batch: int, seq_len: int,
                steps: int, precision: str = "fp32") -> tuple[float, float]:
    """charlm's training loop, display included. Returns (tokens/s from the end of step 2 to the end
    of the loop, with every evaluation and checkpoint the default cadence puts inside it; seconds
    of the end-of-run evaluation and saves, a one-time cost like start-up, reported apart)."""
    from rich.console import Console
    from charlm.cli.training_view import TrainingView

    view = TrainingView(Console(file=io.StringIO(), force_terminal=False), plain=True)
    seen = {}

    def on_event(e):
        view(e)
        if e.kind == "chunk" and e.step == 2:
            seen["start"] = e.elapsed
        if e.kind == "chunk" and e.step == steps:
            seen["last_chunk"] = time.perf_counter()
        if e.kind == "finish":
            seen["elapsed"], seen["finish"] = e.elapsed, time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(corpus=str(corpus), out=str(Path(tmp) / "run"), batch_size=batch, seq_len=seq_len,
                          max_steps=steps, sample_length=0, precision=precision)
        train(cfg, ModelConfig(cell="lstm", embedding_size=emb, hidden_size=hidden, layers=layers),
              on_event=on_event)
    # Finished.elapsed is read when the loop ends, before the end-of-run evaluation and save.
    rate = batch * seq_len * (steps - 2) / (seen["elapsed"] - seen["start"])
    return rate, seen["finish"] - seen["last_chunk"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one round (smoke test)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None,
                    help="steps per measurement (default: 600 at 1x256, so the window holds the evaluation "
                         "and checkpoints of step 500 at charlm's default cadence, and 100 at 2x512)")
    args = ap.parse_args()
    corpus = corpus_path("tinyshakespeare.txt")
    from charlm.corpus.dataset import build_tokenizer
    from charlm.corpus.text import Corpus, scan
    c = Corpus.resolve(str(corpus))
    tok = build_tokenizer(c, scan(c), "char", None, 1, "none")
    ids = tok.encode(corpus.read_text(encoding="utf-8"))
    shapes = [(64, 256, 1, 600), (64, 512, 2, 100)] if not args.quick else [(16, 32, 1, 20)]
    rounds = 1 if args.quick else args.rounds
    n = 512 if args.quick else 1024
    peaks = {"fp32": matmul_flops(n)}
    precisions = ["fp32"]
    if cpu_has_native_bf16():
        peaks["bf16"] = matmul_flops(n, dtype=torch.bfloat16)
        precisions.append("bf16")
    print(f"{machine()}\nmatmul rate: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))
    for emb, hidden, layers, default_steps in shapes:
        steps = args.steps or default_steps
        for precision in precisions:
            ours, ref, ratios, ends = [], [], [], []
            for i in range(rounds):  # alternate, in turn first, so both see the same machine load
                for which in (("ref", "charlm") if i % 2 == 0 else ("charlm", "ref")):
                    if which == "ref":
                        ref.append(reference_loop(ids, tok.vocab_size, emb, hidden, layers, 64, 64, steps,
                                                  bf16=precision == "bf16"))
                    else:
                        rate, end = charlm_loop(corpus, emb, hidden, layers, 64, 64, steps, precision)
                        ours.append(rate)
                        ends.append(end)
                ratios.append(ours[-1] / ref[-1])
            o, r = float(np.median(ours)), float(np.median(ref))
            fpt, peak = flops_per_token(tok.vocab_size, emb, hidden, layers), peaks[precision]
            name = f"lstm {layers}x{hidden}"
            ratio = float(np.median(ratios))
            print(f"{name} {precision}: charlm {o:,.0f} tok/s | reference loop {r:,.0f} tok/s | ratio {ratio:.3f} "
                  f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)}) | MFU ({precision} matmul rate) charlm "
                  f"{o * fpt / peak:.1%}, reference {r * fpt / peak:.1%} | end-of-run evaluation and save "
                  f"{np.median(ends):.2f} s", flush=True)
            append_result("throughput", {"model": name, "precision": precision, "batch": 64, "seq_len": 64,
                                         "charlm_tok_s": o, "reference_tok_s": r, "ratio": ratio,
                                         "round_ratios": ratios, "end_of_run_s": float(np.median(ends)),
                                         "matmul_gflops": peak / 1e9, "mfu_charlm": o * fpt / peak,
                                         "mfu_reference": r * fpt / peak, "rounds": rounds, "steps": steps,
                                         "quick": args.quick})


if __name__ == "__main__":
    main()
