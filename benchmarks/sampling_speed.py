"""Sampling speed: charlm's generation path against a bare nn.LSTM loop, same process, alternating.

charlm's figure is characters/s of `LanguageModel.stream` (charlm.sampling.generate: prime in one
pass, then one recurrent step per character with the state carried, temperature, <unk> ban, the
char StreamDecoder) from an LSTM 1x512 with a CharTokenizer built on tiny shakespeare, batch 1,
on the CPU. The reference is the loop a user would write: nn.Embedding -> one-step nn.LSTM call
with the state carried -> nn.Linear -> softmax -> torch.multinomial, under inference_mode, with the
same weights, decoding through a list. Both run in the same process, alternating round by round;
the reference runs once at the process's thread setting and once at one thread (the fair
comparison, since charlm steps a batch of 1 on one thread). Then `num_samples` N = 1, 4, 16, 64 as
one batch: the cost per generated character per sample falls with N. The weights are random:
speed does not depend on what the model learned.

    python benchmarks/sampling_speed.py            # 5 rounds of 3000 characters
    python benchmarks/sampling_speed.py --quick    # a second or two, for the smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_result, corpus_path, load_average, machine, median  # noqa: E402

from charlm.api import LanguageModel  # noqa: E402
from charlm.config import ModelConfig  # noqa: E402
from charlm.model import CharRNN  # noqa: E402
from charlm.corpus.tokenizers import CharTokenizer  # noqa: E402

TARGET = 5000.0  # characters/s, batch 1, LSTM 1x512, CPU (issue 5, target 3)


def charlm_rate(lm: LanguageModel, length: int, num_samples: int = 1) -> float:
    """Characters/s (all samples together) through LanguageModel.stream_batch, text joined as the CLI does."""
    texts = [[] for _ in range(num_samples)]
    t = time.perf_counter()
    for i, piece in lm.stream_batch(length=length, temperature=0.8, seed=1, num_samples=num_samples):
        texts[i].append(piece)
    out = ["".join(text) for text in texts]
    seconds = time.perf_counter() - t
    assert all(len(s) == length for s in out)
    return num_samples * length / seconds


@torch.inference_mode()
def reference_rate(model: CharRNN, itos: list[str], length: int, threads: int) -> float:
    """The bare loop: one nn.LSTM call per character, state carried, multinomial; characters/s."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(1)
        t = time.perf_counter()
        x, state, out = torch.tensor([[itos.index("\n")]]), None, []
        for _ in range(length):
            h, state = model.rnn(model.embed(x), state)             # (1, 1, H)
            probs = torch.softmax(model.head(h[:, -1]) / 0.8, dim=-1)
            x = torch.multinomial(probs, 1, generator=gen)         # (1, 1)
            out.append(itos[x.item()])
        "".join(out)
        return length / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=3000, help="characters per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hidden-size", type=int, default=512)
    ap.add_argument("--batches", default="1,4,16,64", help="num_samples values for the batch table")
    ap.add_argument("--quick", action="store_true", help="tiny run for the smoke test")
    args = ap.parse_args()
    if args.quick:
        args.length, args.rounds, args.batches = 100, 1, "1,4"

    text = corpus_path("tinyshakespeare.txt").read_text(encoding="utf-8")
    tok = CharTokenizer(sorted(set(text)))
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(cell="lstm", vocab_size=tok.vocab_size, embedding_size=64,
                                hidden_size=args.hidden_size, layers=1)).eval()
    lm = LanguageModel(model, tok, None, torch.device("cpu"), Path("(in memory)"))
    threads = torch.get_num_threads()
    print(machine())
    print(f"LSTM 1x{args.hidden_size}, vocab {tok.vocab_size}, batch 1, CPU, {args.length} characters "
          f"x {args.rounds} rounds, alternating; {load_average()}")

    charlm_runs, ref_runs, ref1_runs = [], [], []
    charlm_rate(lm, 50)                                              # warm-up both paths
    reference_rate(model, tok.itos, 50, 1)
    for r in range(args.rounds):
        # The reference is 5-50x slower: shorter runs of it give the same rate in less time.
        charlm_runs.append(charlm_rate(lm, args.length))
        ref1_runs.append(reference_rate(model, tok.itos, max(50, args.length // 4), 1))
        ref_runs.append(reference_rate(model, tok.itos, max(50, args.length // 20), threads))
        print(f"  round {r + 1}: charlm {charlm_runs[-1]:8.0f} chars/s | bare nn.LSTM loop "
              f"{ref1_runs[-1]:6.0f} (1 thread), {ref_runs[-1]:6.0f} ({threads} threads)")
    ours, ref1, ref = median(charlm_runs), median(ref1_runs), median(ref_runs)
    ratio1 = median([a / b for a, b in zip(charlm_runs, ref1_runs)])
    ratio = median([a / b for a, b in zip(charlm_runs, ref_runs)])
    print(f"charlm sampling: {ours:,.0f} chars/s (median); reference bare nn.LSTM loop: {ref1:,.0f} "
          f"chars/s at 1 thread, {ref:,.0f} at {threads}; ratio {ratio1:.2f}x (1 thread), "
          f"{ratio:.2f}x ({threads} threads); target >= {TARGET:,.0f} chars/s: "
          f"{'met' if ours >= TARGET else 'NOT met'}")

    print("num_samples as one batch (charlm):")
    batch = {}
    for n in [int(b) for b in args.batches.split(",")]:
        length = max(50, args.length // max(1, n // 4))               # keep each row a few seconds
        rate = median([charlm_rate(lm, length, n) for _ in range(max(1, min(3, args.rounds)))])
        batch[n] = rate
        print(f"  N={n:3d}: {rate:9,.0f} chars/s in all, {1e6 / rate:7.1f} us per generated character"
              f" ({rate / batch[min(batch)]:.1f}x the N=1 rate)")
    append_result("sampling", {
        "model": f"lstm 1x{args.hidden_size}", "vocab": tok.vocab_size, "length": args.length,
        "rounds": args.rounds, "chars_per_s": ours, "reference_chars_per_s_1thread": ref1,
        "reference_chars_per_s": ref, "reference_threads": threads, "ratio_1thread": ratio1,
        "ratio": ratio, "target_chars_per_s": TARGET, "met": ours >= TARGET,
        "batch_chars_per_s": {str(k): v for k, v in batch.items()}, "quick": args.quick})


if __name__ == "__main__":
    main()
